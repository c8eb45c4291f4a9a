"""A small Llama-style decoder in Flax NNX whose position scheme and attention are config data.

    h = embed(tokens)
    for each layer:  h = h + Attention(RMSNorm(h));  h = h + SwiGLU(RMSNorm(h))
    logits = RMSNorm(h) @ W_out          (W_out = embed^T when embeddings are tied)

Attention is grouped-query (num_kv_heads <= num_heads). Positions are explicit integer ids,
so packed documents, KV-cache offsets and ring-attention layouts all rotate correctly:
RoPE (with any Hugging Face `rope_scaling`), ALiBi, or none (NoPE) come from
`ModelConfig.position`; attention is one `AttentionSpec` per call (`Attention.spec`: the
config's mask, soft-cap, ALiBi and pattern, plus the call's positions) run by
`Attention.attend` through `longctx_jax.attention.dispatch.attend` with
`ModelConfig.attention_impl` ("auto" by default: the memory-efficient choice of the backend),
or by the configured pattern (`config.model.attention.pattern`: Longformer, BigBird, LongNet
dilated; see `attention/patterns/choice.py`). The pretrained-model loaders fill this
same module with real weights.

Every projection is one `cpu_blas.einsum` (`ModelConfig.matmul_impl`): XLA's dot, or on a
single CPU device in float32 numpy's OpenBLAS, which runs these GEMMs faster (docs/benchmarks.md).
Weights are stored `[in, out]`; `with_decode_layout` attaches `[out, in]` copies, one per
product, that decode's few-row products read faster (`DecodeLayout`, `models/generate.py`).

`Decoder.hidden` is the one block loop: variants run it on embeddings they build (memory
tokens) or with every layer's rotation or attention replaced through `rotary=` /
`attention_fn=` (LongRoPE's searched frequencies, landmark attention), never a copied block.

Parameters carry logical axis names (`logical_axes` metadata) that `longctx_jax.sharding`
maps to mesh axes. Low-rank adapters (`longctx_jax.models.lora`) attach to a projection as
`<module>.<name>_lora` and add their output through `adapter_delta`.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from longctx_jax.attention.dispatch import attend
from longctx_jax.attention.spec import AttentionSpec
from longctx_jax.models import cpu_blas, kv_cache
from longctx_jax.models.config import ModelConfig
from longctx_jax.positional.alibi import alibi_slopes
from longctx_jax.positional.rope import apply_rope, rope_frequencies
from longctx_jax.sharding import ACTIVATION_BTD, ACTIVATION_BTV, constrain
from longctx_jax.typing import Array

# (x_BTNH, positions_BT) -> x rotated; replaces the configured RoPE of every layer.
RotaryFn = Callable[[Array, Array], Array]
# (q_BTNH, k_BTKH, v_BTKH) -> out_BTNH; replaces `attend` with the config's options.
AttentionFn = Callable[[Array, Array, Array], Array]


def adapter_delta(module: nnx.Module, name: str, x_BTI: Array, out_shape: tuple[int, ...]) -> Array | float:
    """What a low-rank adapter attached as `module.<name>_lora` adds to the projection `name`.

    The adapter (see `longctx_jax.models.lora`) maps the flattened input `[B, T, prod(in)]` to
    the flattened output `[B, T, prod(out_shape)]`; without one this is 0.
    """
    adapter = getattr(module, f"{name}_lora", None)
    if adapter is None:
        return 0.0
    B, T = x_BTI.shape[:2]
    return adapter(x_BTI.reshape(B, T, -1)).reshape(B, T, *out_shape).astype(x_BTI.dtype)


class DecodeLayout(nnx.Variable):
    """Projection weights copied `[out, in]` for decode's few-row products (`models/generate.py`).

    `with_decode_layout` attaches one per product a block makes in decode, the weights of one
    input side by side (`wqkv_t`: q, k and v; `wo_t`; `w_gate_up_t`: gate and up; `w_down_t`),
    and `decode_copy` reads them: the few-row handler then reads each weight row as one dot
    product, not adding rows of w into the output, and makes one call per input (diagnostics in
    docs/kv_cache.md). Not a `nnx.Param`: never trained, saved or exported.
    """


# How many leading axes of each projection weight are its inputs (wo is [N, H, D], the others [D, ...]).
INPUT_AXES = {"wq": 1, "wk": 1, "wv": 1, "wo": 2, "w_gate": 1, "w_up": 1, "w_down": 1}
# (module attribute in Block, copy name, the parameters it holds side by side)
_DECODE_COPIES = (("attn", "wqkv_t", ("wq", "wk", "wv")), ("attn", "wo_t", ("wo",)),
                  ("mlp", "w_gate_up_t", ("w_gate", "w_up")), ("mlp", "w_down_t", ("w_down",)))


def decode_copy(module: nnx.Module, name: str, x_BTI: Array, impl: str) -> Array | None:
    """`x @ copy^T` `[B, T, out]` for the `DecodeLayout` copy `module.<name>` (x's trailing axes
    flattened); None when the module holds no such copy."""
    copy = getattr(module, name, None)
    if copy is None:
        return None
    B, T = x_BTI.shape[:2]
    return cpu_blas.einsum("BTI,OI->BTO", x_BTI.reshape(B, T, -1), copy[...].astype(x_BTI.dtype), impl)


def decode_layout_bytes(model: "Decoder") -> int:
    """Bytes the copies of `with_decode_layout` take (every block's projection weights once,
    in the activation dtype)."""
    itemsize = jnp.dtype(model.cfg.dtype).itemsize
    return sum(getattr(getattr(block, module_name), name)[...].size * itemsize
               for block in model.layers for module_name, _, names in _DECODE_COPIES for name in names)


def with_decode_layout(model: "Decoder") -> "Decoder":
    """A copy of `model`'s module graph (sharing its parameters) with every block's projection
    weights also held `[out, in]` as `DecodeLayout` variables, which decode then reads.

    The copies are new arrays in the activation dtype (so a decode step casts nothing): the
    projection weights are held twice while both live (425 MB more for SmolLM2-135M in
    float32). `model` itself is not changed.
    """
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)
    dtype = jnp.dtype(model.cfg.dtype)
    for block in copy.layers:
        for module_name, name, params in _DECODE_COPIES:
            module = getattr(block, module_name)
            rows = []
            for param in params:
                w = getattr(module, param)[...]  # [in..., out...] -> [out, in]
                rows.append(w.reshape(math.prod(w.shape[:INPUT_AXES[param]]), -1).T.astype(dtype))
            setattr(module, name, DecodeLayout(jnp.concatenate(rows, axis=0)))
    return copy


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], std: float, dtype) -> nnx.Param:
    init = jax.random.normal(rngs.params(), shape, jnp.float32) * std
    return nnx.Param(init.astype(dtype), logical_axes=axes)


class RMSNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * scale, computed in float32."""

    def __init__(self, dim: int, eps: float, param_dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("embed",))

    def __call__(self, x_BTD: Array) -> Array:
        x = x_BTD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return (x * self.scale[...].astype(jnp.float32)).astype(x_BTD.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with a pluggable position scheme and attention function."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        D, N, K, H = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pdt = jnp.dtype(cfg.param_dtype)
        self.wq = _param(rngs, (D, N, H), ("embed", "heads", "head_dim"), cfg.init_std, pdt)
        self.wk = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), cfg.init_std, pdt)
        self.wv = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), cfg.init_std, pdt)
        out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
        self.wo = _param(rngs, (N, H, D), ("heads", "head_dim", "embed"), out_std, pdt)
        if cfg.qkv_bias:
            self.bq = nnx.Param(jnp.zeros((N, H), pdt), logical_axes=("heads", "head_dim"))
            self.bk = nnx.Param(jnp.zeros((K, H), pdt), logical_axes=("kv_heads", "head_dim"))
            self.bv = nnx.Param(jnp.zeros((K, H), pdt), logical_axes=("kv_heads", "head_dim"))

    def project_qkv(self, x_BTD: Array) -> tuple[Array, Array, Array]:
        """Queries `[B, T, N, H]`, keys and values `[B, T, K, H]`, before any rotation."""
        dt, impl = x_BTD.dtype, self.cfg.matmul_impl
        N, K, H = self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim
        qkv = decode_copy(self, "wqkv_t", x_BTD, impl)
        if qkv is None:
            q = cpu_blas.einsum("BTD,DNH->BTNH", x_BTD, self.wq[...].astype(dt), impl)
            k = cpu_blas.einsum("BTD,DKH->BTKH", x_BTD, self.wk[...].astype(dt), impl)
            v = cpu_blas.einsum("BTD,DKH->BTKH", x_BTD, self.wv[...].astype(dt), impl)
        else:
            B, T = x_BTD.shape[:2]
            q, k, v = jnp.split(qkv, [N * H, (N + K) * H], axis=-1)
            q, k, v = q.reshape(B, T, N, H), k.reshape(B, T, K, H), v.reshape(B, T, K, H)
        q = q + adapter_delta(self, "wq", x_BTD, (N, H))
        k = k + adapter_delta(self, "wk", x_BTD, (K, H))
        v = v + adapter_delta(self, "wv", x_BTD, (K, H))
        if self.cfg.qkv_bias:
            q = q + self.bq[...].astype(dt)
            k = k + self.bk[...].astype(dt)
            v = v + self.bv[...].astype(dt)
        return q, k, v

    def rotate(self, x_BTNH: Array, positions_BT: Array, seq_len: int) -> Array:
        """Applies the configured RoPE (a no-op for ALiBi and NoPE)."""
        if self.cfg.position != "rope":
            return x_BTNH
        inv_freq, attention_factor = rope_frequencies(
            self.cfg.head_dim, self.cfg.rope_theta, self.cfg.rope_scaling_dict, seq_len=seq_len
        )
        return apply_rope(x_BTNH, positions_BT, inv_freq, attention_factor,
                          interleaved=self.cfg.rope_interleaved)

    def spec(self, q_positions_BT: Array | None = None, k_positions_BS: Array | None = None,
             segment_ids_BT: Array | None = None, **changes) -> AttentionSpec:
        """The `AttentionSpec` of this layer: the config's mask, soft-cap, ALiBi and pattern,
        with the call's positions and segment ids (`changes` overrides fields)."""
        cfg = self.cfg
        spec = AttentionSpec(
            causal=True, window=cfg.window, sinks=cfg.sinks, logit_soft_cap=cfg.logit_soft_cap,
            alibi_slopes=alibi_slopes(cfg.num_heads) if cfg.position == "alibi" else None,
            mask=cfg.pattern.mask, q_positions=q_positions_BT, k_positions=k_positions_BS,
            segment_ids=segment_ids_BT,
        )
        return spec.replace(**changes) if changes else spec

    def attend(self, q_BTNH: Array, k_BSKH: Array, v_BSKH: Array, spec: AttentionSpec) -> Array:
        """The one attention call of every path: the configured pattern or implementation."""
        pattern = self.cfg.pattern
        if pattern.attention is not None:
            return pattern.attention(q_BTNH, k_BSKH, v_BSKH, spec, self.cfg.attention_impl)
        return attend(q_BTNH, k_BSKH, v_BSKH, spec, impl=self.cfg.attention_impl)

    def _check_cacheable(self) -> None:
        if not self.cfg.pattern.cacheable:
            raise ValueError(f"attention pattern {self.cfg.attention_pattern!r} has no KV-cache form")

    def output(self, out_BTNH: Array) -> Array:
        out = decode_copy(self, "wo_t", out_BTNH, self.cfg.matmul_impl)
        if out is None:
            out = cpu_blas.einsum("BTNH,NHD->BTD", out_BTNH, self.wo[...].astype(out_BTNH.dtype),
                                  self.cfg.matmul_impl)
        return out + adapter_delta(self, "wo", out_BTNH, (self.cfg.d_model,))

    def __call__(
        self,
        x_BTD: Array,
        positions_BT: Array | None,
        segment_ids_BT: Array | None,
        *,
        rotary: RotaryFn | None = None,
        attention_fn: AttentionFn | None = None,
    ) -> Array:
        """Self-attention of `x_BTD`; `rotary` / `attention_fn` replace the configured ones.

        `rotary` gets the RoPE positions (`positions_BT`, or `[1, T]` ids 0 .. T-1 when None);
        `attention_fn` gets the rotated q, k and v and sees neither positions nor segment ids.
        """
        T = x_BTD.shape[1]
        rope_positions = positions_BT if positions_BT is not None else jnp.arange(T)[None, :]
        q, k, v = self.project_qkv(x_BTD)
        rotate = rotary or (lambda x, positions: self.rotate(x, positions, T))
        q, k = rotate(q, rope_positions), rotate(k, rope_positions)
        if attention_fn is not None:
            return self.output(attention_fn(q, k, v))
        return self.output(self.attend(q, k, v, self.spec(positions_BT, positions_BT, segment_ids_BT)))

    def cached(self, x_BTD: Array, k_BCKH: Array, v_BCKH: Array, plan: kv_cache.CachePlan,
               last_query_only: bool = False) -> tuple[Array, Array, Array]:
        """Attention of new tokens over a KV cache; returns (out, updated k, updated v).

        Positions come from `plan` (see kv_cache.py). Plain caches store rotated keys;
        StreamingLLM caches store raw keys and rotate every slot by its re-indexed position.
        `last_query_only`: every token's k / v is written but only the last token attends
        (out is `[B, 1, D]`), all the last layer of a last-token-logits pass needs.
        """
        self._check_cacheable()
        C = k_BCKH.shape[1]
        q, k, v = self.project_qkv(x_BTD)
        if not plan.rotate_on_read:
            k = self.rotate(k, plan.q_positions_BT, C)
        q_positions = plan.q_positions_BT
        if last_query_only:  # before rotating: the other rows' queries are never used
            q, q_positions = q[:, -1:], q_positions[:, -1:]
        q = self.rotate(q, q_positions, C)
        k_BCKH = kv_cache.write(k_BCKH, k, plan.write_index)
        v_BCKH = kv_cache.write(v_BCKH, v, plan.write_index)
        k_read = self.rotate(k_BCKH, plan.k_positions_BC, C) if plan.rotate_on_read else k_BCKH
        out = self.attend(q, k_read.astype(q.dtype), v_BCKH.astype(q.dtype),
                          self.spec(q_positions, plan.k_positions_BC))
        return self.output(out), k_BCKH, v_BCKH

    def prefill(self, x_BTD: Array, k_BCKH: Array, v_BCKH: Array, *, streaming: bool,
                last_query_only: bool = False) -> tuple[Array, Array, Array]:
        """`cached` on an empty cache: the T new tokens attend to themselves at positions 0 .. T-1.

        With default positions the attention iterates only the causal band of key blocks
        instead of masking all C slots. Keys and values are rounded to the cache dtype before
        attending, exactly as `cached` reads them back; they land in slots 0 .. T-1.
        `last_query_only` as in `cached`: the one query row at position T - 1 runs through
        the configured implementation too (`_last_row`).
        """
        self._check_cacheable()
        T, C = x_BTD.shape[1], k_BCKH.shape[1]
        positions = jnp.arange(T)[None, :]
        q, k, v = self.project_qkv(x_BTD)
        stored_k = (k if streaming else self.rotate(k, positions, C)).astype(k_BCKH.dtype)
        stored_v = v.astype(v_BCKH.dtype)
        k_read = (self.rotate(stored_k, positions, C) if streaming else stored_k).astype(q.dtype)
        v_read = stored_v.astype(q.dtype)
        if last_query_only:  # rotate only the query row that attends
            q = self.rotate(q[:, -1:], positions[:, -1:], C)
            out = self._last_row(q, k_read, v_read)
        else:
            out = self.attend(self.rotate(q, positions, C), k_read, v_read, self.spec())
        return (self.output(out), kv_cache.write(k_BCKH, stored_k, 0),
                kv_cache.write(v_BCKH, stored_v, 0))

    def _last_row(self, q_B1NH: Array, k_BTKH: Array, v_BTKH: Array) -> Array:
        """Attention of the query at position T - 1 to keys 0 .. T-1.

        Every key precedes it, so without positional terms (ALiBi, a position-dependent
        pattern mask) or sinks this is non-causal attention over the keys in its window, with
        default positions: a call every implementation takes (cpu_flash included). Otherwise
        the true positions go in the spec.
        """
        T = k_BTKH.shape[1]
        spec = self.spec()
        if spec.alibi_slopes is None and spec.mask is None and not spec.sinks:
            start = 0 if spec.window is None else max(0, T - spec.window)
            spec = spec.replace(causal=False, window=None)
            return self.attend(q_B1NH, k_BTKH[:, start:], v_BTKH[:, start:], spec)
        positions = jnp.arange(T)[None, :]
        spec = spec.replace(q_positions=positions[:, -1:], k_positions=positions)
        return self.attend(q_B1NH, k_BTKH, v_BTKH, spec)


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer 2020)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        D, F = cfg.d_model, cfg.mlp_dim
        pdt = jnp.dtype(cfg.param_dtype)
        self.matmul_impl = cfg.matmul_impl
        self.w_gate = _param(rngs, (D, F), ("embed", "mlp"), cfg.init_std, pdt)
        self.w_up = _param(rngs, (D, F), ("embed", "mlp"), cfg.init_std, pdt)
        out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
        self.w_down = _param(rngs, (F, D), ("mlp", "embed"), out_std, pdt)

    def __call__(self, x_BTD: Array) -> Array:
        impl = self.matmul_impl
        F, D = self.w_up.shape[1], self.w_up.shape[0]
        gate_up = decode_copy(self, "w_gate_up_t", x_BTD, impl)
        if gate_up is None:
            gate = cpu_blas.einsum("BTD,DF->BTF", x_BTD, self.w_gate[...].astype(x_BTD.dtype), impl)
            up = cpu_blas.einsum("BTD,DF->BTF", x_BTD, self.w_up[...].astype(x_BTD.dtype), impl)
        else:
            gate, up = jnp.split(gate_up, 2, axis=-1)
        gate = gate + adapter_delta(self, "w_gate", x_BTD, (F,))
        up = up + adapter_delta(self, "w_up", x_BTD, (F,))
        hidden = jax.nn.silu(gate) * up
        out = decode_copy(self, "w_down_t", hidden, impl)
        if out is None:
            out = cpu_blas.einsum("BTF,FD->BTD", hidden, self.w_down[...].astype(hidden.dtype), impl)
        return out + adapter_delta(self, "w_down", hidden, (D,))


class Block(nnx.Module):
    """Pre-norm residual block: attention then SwiGLU."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        pdt = jnp.dtype(cfg.param_dtype)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pdt)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pdt)
        self.mlp = SwiGLU(cfg, rngs)

    def __call__(
        self,
        x_BTD: Array,
        positions_BT: Array | None,
        segment_ids_BT: Array | None,
        *,
        rotary: RotaryFn | None = None,
        attention_fn: AttentionFn | None = None,
    ) -> Array:
        attn = self.attn(self.attn_norm(x_BTD), positions_BT, segment_ids_BT,
                         rotary=rotary, attention_fn=attention_fn)
        return self.after_attention(x_BTD, attn)

    def after_attention(self, x_BTD: Array, attn_BTD: Array) -> Array:
        """The rest of the block once attention of `attn_norm(x)` is known: residual, then SwiGLU."""
        x_BTD = x_BTD + attn_BTD
        return x_BTD + self.mlp(self.mlp_norm(x_BTD))


class Decoder(nnx.Module):
    """Token ids `[B, T]` -> float32 logits `[B, T, V]`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        # Tied: the table is also the output layer, so keep logits O(1) at init.
        embed_std = cfg.init_std if cfg.tie_embeddings else 1.0
        self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), embed_std, pdt)
        self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pdt)
        if not cfg.tie_embeddings:
            self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                                  cfg.d_model**-0.5, pdt)

    def embed_tokens(self, tokens_BT: Array) -> Array:
        # The table whole along the width before the lookup (on a mesh), so the looked-up
        # rows come out split over batch and sequence rather than over the fsdp-split width.
        table_VD = constrain(self.embed[...].astype(jnp.dtype(self.cfg.dtype)), ("vocab", None))
        return jnp.take(table_VD, tokens_BT, axis=0)

    def logits(self, h_BTD: Array) -> Array:
        h_BTD = self.final_norm(h_BTD)
        if self.cfg.tie_embeddings:
            logits = cpu_blas.einsum("BTD,VD->BTV", h_BTD, self.embed[...].astype(h_BTD.dtype),
                                     self.cfg.matmul_impl, preferred_element_type=jnp.float32)
        else:
            logits = cpu_blas.einsum("BTD,DV->BTV", h_BTD, self.lm_head[...].astype(h_BTD.dtype),
                                     self.cfg.matmul_impl, preferred_element_type=jnp.float32)
        return constrain(logits, ACTIVATION_BTV)

    def __call__(
        self,
        tokens_BT: Array,
        positions_BT: Array | None = None,
        segment_ids_BT: Array | None = None,
    ) -> Array:
        """Logits for every position.

        Args:
          tokens_BT: int token ids `[batch, seq]`.
          positions_BT: true integer positions `[batch, seq]` (default 0 .. seq - 1); packed
            documents restart at 0, ring layouts pass their permuted global positions.
          segment_ids_BT: packed-document ids; tokens attend only within their document.

        Returns:
          float32 logits `[batch, seq, vocab]`.
        """
        return self.logits(self.hidden(self.embed_tokens(tokens_BT), positions_BT, segment_ids_BT))

    def hidden(
        self,
        h_BTD: Array,
        positions_BT: Array | None = None,
        segment_ids_BT: Array | None = None,
        *,
        rotary: RotaryFn | None = None,
        attention_fn: AttentionFn | None = None,
        num_layers: int | None = None,
    ) -> Array:
        """The block stack on given inputs: hidden states `[B, T, D]` before the final norm.

        Args:
          h_BTD: inputs of the first block (token embeddings, or embeddings the caller built).
          positions_BT: as in `__call__` (default 0 .. T - 1).
          segment_ids_BT: as in `__call__`; only the default attention uses them.
          rotary: `(x_BTNH, positions_BT) -> rotated x` used by every layer instead of the
            configured RoPE (e.g. frequencies given from outside, possibly traced).
          attention_fn: `(q_BTNH, k_BTKH, v_BTKH) -> out_BTNH` used by every layer instead of
            `attend` with the config's options (e.g. landmark attention).
          num_layers: run only the first `num_layers` blocks (default all).

        Returns:
          the last block's output `[B, T, D]` (`logits` applies the final norm and head).
        """
        def run(block: Block, x_BTD: Array) -> Array:
            return block(x_BTD, positions_BT, segment_ids_BT, rotary=rotary, attention_fn=attention_fn)

        h_BTD = constrain(h_BTD, ACTIVATION_BTD)  # split over batch and sequence, never width
        for block in list(self.layers)[:num_layers]:
            if self.cfg.remat:
                # A pure (state, x) function rather than nnx.remat: nnx.remat refuses blocks
                # whose parameters come from an outer trace (a model closed over by lax.map).
                graphdef, state = nnx.split(block)
                policy = getattr(jax.checkpoint_policies, self.cfg.remat_policy)
                h_BTD = jax.checkpoint(lambda s, x: run(nnx.merge(graphdef, s), x),
                                       policy=policy)(state, h_BTD)
            else:
                h_BTD = run(block, h_BTD)
            h_BTD = constrain(h_BTD, ACTIVATION_BTD)
        return h_BTD

    def decode(self, tokens_BT: Array, cache: kv_cache.KVCache, *, last_only: bool = False
               ) -> tuple[Array, kv_cache.KVCache]:
        """Logits of new tokens that follow the cached ones, and the updated cache.

        Args:
          tokens_BT: the next `T` tokens of every sequence `[batch, T]` (a prompt, or one
            generated token); positions continue from `cache.length`.
          cache: a `kv_cache.KVCache` of this model's layers and KV heads.
          last_only: return logits of the last token only (`[batch, 1, vocab]`), which is
            all sampling needs and saves T x vocab floats in a long prefill.

        Returns:
          (float32 logits `[batch, T, vocab]`, cache with the T tokens written).
        """
        plan = cache.plan(tokens_BT.shape[1])
        logits, ks, vs = self._through_cache(
            tokens_BT, cache, lambda attn, x, k, v, last: attn.cached(x, k, v, plan, last), last_only)
        return logits, cache.advance(ks, vs, tokens_BT.shape[1])

    def prefill(self, tokens_BT: Array, cache: kv_cache.KVCache, *, last_only: bool = False
                ) -> tuple[Array, kv_cache.KVCache]:
        """`decode` of a prompt into an empty cache, as fast as a plain forward pass.

        The result is that of `decode(tokens_BT, <cache emptied>)`: whatever `cache` held is
        ignored and the returned cache holds exactly the T prompt tokens. The prompt attends
        only to itself with default positions, so blockwise attention visits just the causal
        band of tiles rather than masking every slot of the cache.

        Raises:
          ValueError: the prompt is longer than the cache.
        """
        T = tokens_BT.shape[1]
        if not 1 <= T <= cache.capacity:
            raise ValueError(f"prefill needs 1 to {cache.capacity} tokens (the cache size), got {T}")
        def attention(attn: Attention, x_BTD: Array, k_BCKH: Array, v_BCKH: Array, last: bool):
            return attn.prefill(x_BTD, k_BCKH, v_BCKH, streaming=cache.streaming, last_query_only=last)

        logits, ks, vs = self._through_cache(tokens_BT, cache, attention, last_only)
        return logits, cache.emptied().advance(ks, vs, T)

    def _through_cache(self, tokens_BT: Array, cache: kv_cache.KVCache, cache_attention, last_only: bool
                       ) -> tuple[Array, list[Array], list[Array]]:
        """Logits and every layer's new k / v, each block attending through
        `cache_attention(attention module, normed x, k cache, v cache, last_query_only)
        -> (out, k cache, v cache)`. With `last_only` the last layer needs every token's k / v
        for the cache but attention and SwiGLU for the last token alone (1/num_layers of the work)."""
        h = self.embed_tokens(tokens_BT)
        ks, vs = [], []
        for i, (block, k_BCKH, v_BCKH) in enumerate(zip(self.layers, cache.k, cache.v, strict=True)):
            last_query_only = last_only and i == len(self.layers) - 1
            out, k_BCKH, v_BCKH = cache_attention(block.attn, block.attn_norm(h), k_BCKH, v_BCKH,
                                                  last_query_only)
            h = block.after_attention(h[:, -1:] if last_query_only else h, out)
            ks.append(k_BCKH)
            vs.append(v_BCKH)
        return self.logits(h[:, -1:] if last_only else h), ks, vs
