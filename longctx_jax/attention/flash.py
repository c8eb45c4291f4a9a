"""Flash attention as Pallas kernels (Dao et al. 2022; Dao 2023, "FlashAttention-2").

    out = softmax(cap * tanh(scale * q k^T / cap) - slope * |i - j|, masked) v

computed one `[block_q, block_k]` tile at a time with the online softmax (see
`kernels/flash_kernels.py`), never materialising `[T, S]`. The backward is FlashAttention-2
style: the forward saves only the log-sum-exp, a dQ kernel walks key blocks per query
block and a dK/dV kernel walks query blocks per key block, summing the G query heads of
its KV head (KV heads are never repeated per query head).

Block skipping: with default positions (0..T-1 queries, 0..S-1 keys) the tile pattern of
`AttentionMask(causal, window, sinks)` is computed on the host (`kernels/block_metadata.py`)
and each program visits only its non-empty tiles, evaluating the mask only in partial
ones; a window of w over n tokens costs O(n * w). With explicit `q_positions` /
`k_positions` (traced arrays) the pattern is unknown on the host, so every tile is visited
and masked from the positions: correct, but O(T * S). Lengths are padded to the block
sizes; padded keys are always masked.

Backends (`interpret=None`): CPU runs the kernels in the Pallas interpreter, GPU compiles
them through Triton (each kernel with the tiles, warps and pipeline depth that
`kernels/gpu_plan.py` fits to sm80 / sm90 shared memory and registers), TPU hands the same
mask to JAX's splash attention (`kernels/splash.py`, causal / window / segments / soft-cap
only). A materialised additive `bias` is not taken:
pass `alibi_slopes` (evaluated per tile) or use the dense / blockwise implementations.

`flash_attention_with_lse` also returns the log-sum-exp (differentiable), and
`flash_attention_backward` runs the dQ and dK/dV kernels from a saved output and lse, which
may be those of a larger softmax: ring attention calls it per K/V shard with the global ones.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from longctx_jax.attention.kernels import flash_kernels as fk
from longctx_jax.attention.kernels import gpu_plan
from longctx_jax.attention.kernels.block_metadata import block_lists
from longctx_jax.attention.kernels.splash import splash_attention
from longctx_jax.attention.spec import AttentionSpec, implementation
from longctx_jax.typing import Array

_AUX_NAMES = ("q_pos", "k_pos", "q_seg", "kv_seg", "slopes")


def _next_pow2(x: int) -> int:
    return 1 << max(x - 1, 0).bit_length()


def _pad_axis(x: Array, axis: int, size: int) -> Array:
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad)


def _for_kernel(cfg: fk.KernelConfig, kernel: str):
    """`cfg` with the tile sizes of `kernel`'s launch, and its Triton compiler parameters."""
    launch = getattr(cfg.plan, kernel)
    cfg = dataclasses.replace(cfg, block_q=launch.block_q, block_k=launch.block_k)
    if cfg.interpret:
        return cfg, None
    from jax.experimental.pallas import triton as plgpu

    return cfg, plgpu.CompilerParams(num_warps=launch.num_warps, num_stages=launch.num_stages)


def _aux_args(cfg: fk.KernelConfig, aux: dict, seq_specs: dict, slope_spec) -> tuple[list, list]:
    """Optional inputs in the order `flash_kernels._unpack` expects, with their BlockSpecs."""
    args, specs = [], []
    for name in _AUX_NAMES:
        if aux.get(name) is not None:
            args.append(aux[name])
            specs.append(slope_spec if name == "slopes" else seq_specs[name])
    return args, specs


def _full_spec(shape: tuple[int, ...]) -> pl.BlockSpec:
    return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _metadata(cfg: fk.KernelConfig):
    return block_lists(cfg.mask, cfg.q_len, cfg.kv_len, cfg.block_q, cfg.block_k, not cfg.has_positions)


def _forward(cfg: fk.KernelConfig, q, k, v, aux):
    cfg, compiler_params = _for_kernel(cfg, "forward")
    B, Tp, N, H = q.shape
    Sp = k.shape[1]
    G, bq = cfg.groups, cfg.block_q
    lists = _metadata(cfg)
    meta = [jnp.asarray(lists.kv_index), jnp.asarray(lists.kv_full), jnp.asarray(lists.kv_count)]
    seq_specs = {
        "q_pos": pl.BlockSpec((None, Tp), lambda b, n, i: (b, 0)),
        "k_pos": pl.BlockSpec((None, Sp), lambda b, n, i: (b, 0)),
        "q_seg": pl.BlockSpec((None, Tp), lambda b, n, i: (b, 0)),
        "kv_seg": pl.BlockSpec((None, Sp), lambda b, n, i: (b, 0)),
    }
    aux_args, aux_specs = _aux_args(cfg, aux, seq_specs, _full_spec((N,)))
    q_spec = pl.BlockSpec((None, bq, None, H), lambda b, n, i: (b, i, n, 0))
    kv_spec = pl.BlockSpec((None, Sp, None, H), lambda b, n, i: (b, 0, n // G, 0))
    row_spec = pl.BlockSpec((None, None, bq), lambda b, n, i: (b, n, i))
    return pl.pallas_call(
        functools.partial(fk.forward_kernel, cfg=cfg),
        grid=(B, N, Tp // bq),
        in_specs=[_full_spec(m.shape) for m in meta] + [q_spec, kv_spec, kv_spec] + aux_specs,
        out_specs=[q_spec, row_spec],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((B, N, Tp), jnp.float32),
        ],
        interpret=cfg.interpret,
        compiler_params=compiler_params,
        name="flash_forward",
    )(*meta, q, k, v, *aux_args)


def _backward(cfg: fk.KernelConfig, q, k, v, aux, out, lse, d_out, d_lse):
    """(dq, dk, dv) from the saved out `[B, Tp, N, H]`, lse `[B, N, Tp]` and their cotangents."""
    B, Tp, N, H = q.shape
    Sp, K = k.shape[1], k.shape[2]
    G = cfg.groups
    # d lse / d s = p, so an lse cotangent enters exactly like -delta.
    delta = jnp.einsum("BTNH,BTNH->BNT", out.astype(jnp.float32), d_out.astype(jnp.float32))
    delta = delta - d_lse.astype(jnp.float32)
    d_out = d_out.astype(q.dtype)
    slope_spec = _full_spec((N,))

    # dQ: one program per (batch, query head, query block), walking its key blocks.
    cfg_dq, compiler_params = _for_kernel(cfg, "dq")
    bq, lists = cfg_dq.block_q, _metadata(cfg_dq)
    meta = [jnp.asarray(lists.kv_index), jnp.asarray(lists.kv_full), jnp.asarray(lists.kv_count)]
    seq_specs = {
        "q_pos": pl.BlockSpec((None, Tp), lambda b, n, i: (b, 0)),
        "k_pos": pl.BlockSpec((None, Sp), lambda b, n, i: (b, 0)),
        "q_seg": pl.BlockSpec((None, Tp), lambda b, n, i: (b, 0)),
        "kv_seg": pl.BlockSpec((None, Sp), lambda b, n, i: (b, 0)),
    }
    aux_args, aux_specs = _aux_args(cfg, aux, seq_specs, slope_spec)
    q_spec = pl.BlockSpec((None, bq, None, H), lambda b, n, i: (b, i, n, 0))
    kv_spec = pl.BlockSpec((None, Sp, None, H), lambda b, n, i: (b, 0, n // G, 0))
    row_spec = pl.BlockSpec((None, None, bq), lambda b, n, i: (b, n, i))
    dq = pl.pallas_call(
        functools.partial(fk.dq_kernel, cfg=cfg_dq),
        grid=(B, N, Tp // bq),
        in_specs=[_full_spec(m.shape) for m in meta]
        + [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
        + aux_specs,
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, jnp.float32),
        interpret=cfg.interpret,
        compiler_params=compiler_params,
        name="flash_dq",
    )(*meta, q, k, v, d_out, lse, delta, *aux_args)

    # dK/dV: one program per (batch, KV head, key block), walking its query blocks and the
    # G query heads that share the KV head.
    cfg_dkv, compiler_params = _for_kernel(cfg, "dkv")
    bk, lists = cfg_dkv.block_k, _metadata(cfg_dkv)
    meta = [jnp.asarray(lists.q_index), jnp.asarray(lists.q_full), jnp.asarray(lists.q_count)]
    seq_specs = {
        "q_pos": pl.BlockSpec((None, Tp), lambda b, h, j: (b, 0)),
        "k_pos": pl.BlockSpec((None, Sp), lambda b, h, j: (b, 0)),
        "q_seg": pl.BlockSpec((None, Tp), lambda b, h, j: (b, 0)),
        "kv_seg": pl.BlockSpec((None, Sp), lambda b, h, j: (b, 0)),
    }
    aux_args, aux_specs = _aux_args(cfg, aux, seq_specs, slope_spec)
    q_group_spec = pl.BlockSpec((None, Tp, G, H), lambda b, h, j: (b, 0, h, 0))
    k_block_spec = pl.BlockSpec((None, bk, None, H), lambda b, h, j: (b, j, h, 0))
    rows_group_spec = pl.BlockSpec((None, G, Tp), lambda b, h, j: (b, h, 0))
    dk, dv = pl.pallas_call(
        functools.partial(fk.dkv_kernel, cfg=cfg_dkv),
        grid=(B, K, Sp // bk),
        in_specs=[_full_spec(m.shape) for m in meta]
        + [q_group_spec, k_block_spec, k_block_spec, q_group_spec, rows_group_spec, rows_group_spec]
        + aux_specs,
        out_specs=[k_block_spec, k_block_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, jnp.float32)] * 2,
        interpret=cfg.interpret,
        compiler_params=compiler_params,
        name="flash_dkv",
    )(*meta, q, k, v, d_out, lse, delta, *aux_args)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg: fk.KernelConfig, q, k, v, aux):
    return tuple(_forward(cfg, q, k, v, aux))


def _flash_fwd(cfg: fk.KernelConfig, q, k, v, aux):
    out, lse = _forward(cfg, q, k, v, aux)
    return (out, lse), (q, k, v, aux, out, lse)


def _flash_bwd(cfg: fk.KernelConfig, residuals, cotangents):
    q, k, v, aux, out, lse = residuals
    d_out, d_lse = cotangents
    dq, dk, dv = _backward(cfg, q, k, v, aux, out, lse, d_out, d_lse)
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _resolve_block(block: int, length: int, name: str) -> int:
    if block < 1 or block & (block - 1):
        raise ValueError(f"{name} must be a positive power of two, got {block}")
    return min(block, max(16, _next_pow2(length)))


@dataclasses.dataclass(frozen=True)
class _Call:
    """One call's kernel config and its inputs padded to whole blocks (and, on GPU, head dims)."""

    cfg: fk.KernelConfig
    q: Array
    k: Array
    v: Array
    aux: dict


def _prepare(q: Array, k: Array, v: Array, spec: AttentionSpec, block_q: int, block_k: int,
             interpret: bool) -> _Call:
    B, T, N, H = q.shape
    S = k.shape[1]
    bq = _resolve_block(block_q, T, "block_q")
    bk = _resolve_block(block_k, S, "block_k")
    Tp, Sp = -(-T // bq) * bq, -(-S // bk) * bk
    Hp = H if interpret else max(16, _next_pow2(H))
    segment_ids, kv_segment_ids = spec.segment_ids, spec.kv_segment_ids
    q_positions, k_positions = spec.q_positions, spec.k_positions

    aux = {}
    has_positions = q_positions is not None or k_positions is not None
    if has_positions:
        q_pos = jnp.arange(T) if q_positions is None else q_positions
        k_pos = jnp.arange(S) if k_positions is None else k_positions
        aux["q_pos"] = _pad_axis(jnp.broadcast_to(jnp.asarray(q_pos, jnp.int32), (B, T)), 1, Tp)
        aux["k_pos"] = _pad_axis(jnp.broadcast_to(jnp.asarray(k_pos, jnp.int32), (B, S)), 1, Sp)
    if segment_ids is not None:
        kv_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
        aux["q_seg"] = _pad_axis(jnp.broadcast_to(jnp.asarray(segment_ids, jnp.int32), (B, T)), 1, Tp)
        aux["kv_seg"] = _pad_axis(jnp.broadcast_to(jnp.asarray(kv_ids, jnp.int32), (B, S)), 1, Sp)
    if spec.alibi_slopes is not None:
        aux["slopes"] = jax.lax.stop_gradient(jnp.asarray(spec.alibi_slopes, jnp.float32))

    cfg = fk.KernelConfig(
        mask=spec.pattern, q_len=T, kv_len=S, block_q=bq, block_k=bk, groups=N // k.shape[2],
        scale=spec.scale_for(H),
        logit_soft_cap=None if spec.logit_soft_cap is None else float(spec.logit_soft_cap),
        has_positions=has_positions, has_segments=segment_ids is not None,
        has_alibi=spec.alibi_slopes is not None, interpret=bool(interpret),
        plan=gpu_plan.plan(bq, bk, Hp, jnp.dtype(q.dtype).itemsize),
    )

    def pad(x, length):
        return _pad_axis(_pad_axis(x, 1, length), 3, Hp)

    return _Call(cfg, pad(q, Tp), pad(k, Sp), pad(v, Sp), aux)


def _triton_or_interpreter(interpret: bool | None, caller: str) -> bool:
    """`interpret` resolved off TPU; on TPU (which has no Triton) only an explicit choice passes."""
    if interpret is not None:
        return interpret
    backend = jax.default_backend()
    if backend == "tpu":
        raise ValueError(f"{caller} has no TPU kernel (flash_attention uses splash there); pass "
                         "interpret=True or use impl='blockwise'")
    return backend != "gpu"


@implementation(name="flash", unsupported={"bias", "mask"},
                alternatives="alibi_slopes for ALiBi, or 'dense' / 'blockwise' for an arbitrary bias or mask")
def flash_attention_with_lse(
    q: Array, k: Array, v: Array, spec: AttentionSpec, *, block_q: int = 64, block_k: int = 64,
    interpret: bool | None = None,
) -> tuple[Array, Array]:
    """`flash_attention` that also returns lse `[B, T, N]` float32 (differentiable).

    Rows with no allowed key have output 0 and lse 0. `interpret=None` is the interpreter on
    CPU and Triton on GPU; on TPU (splash returns no lse here) it raises ValueError.
    """
    H, T = q.shape[3], q.shape[1]
    interpret = _triton_or_interpreter(interpret, "flash_attention_with_lse")
    call = _prepare(q, k, v, spec, block_q, block_k, interpret)
    out, lse_BNT = _flash(call.cfg, call.q, call.k, call.v, call.aux)
    return out[:, :T, :, :H], lse_BNT[:, :, :T].transpose(0, 2, 1)


def flash_attention_backward(
    q: Array,
    k: Array,
    v: Array,
    out: Array,
    lse: Array,
    d_out: Array,
    d_lse: Array | None = None,
    spec: AttentionSpec | None = None,
    *,
    block_q: int = 64,
    block_k: int = 64,
    interpret: bool | None = None,
) -> tuple[Array, Array, Array]:
    """(dq, dk, dv) of attention from a saved output and lse, by the flash dQ and dK/dV kernels.

    The FlashAttention-2 backward needs only the output and the log-sum-exp, so `out`
    `[B, T, N, H]` and `lse` `[B, T, N]` may come from any forward with the same `spec` over
    a superset of these keys: ring attention passes the GLOBAL output and lse with one K/V
    shard, and gets that shard's exact contribution to dq and its dk, dv.

    Args:
      q, k, v: `[B, T, N, H]`, `[B, S, K, H]`, `[B, S, K, H]`.
      out, lse: the forward's output `[B, T, N, H]` and log-sum-exp `[B, T, N]`.
      d_out, d_lse: their cotangents (`d_lse` None: zero).
      spec: the forward's `AttentionSpec` (no `bias` / `mask`).
      block_q, block_k, interpret: as `flash_attention`.

    Returns:
      (dq, dk, dv) in the dtypes of q, k, v.
    """
    spec = spec or AttentionSpec()
    refused = sorted(spec.given() & flash_attention.unsupported)
    if refused:
        raise ValueError(f"flash_attention_backward cannot take {refused}; use blockwise_attention_backward")
    spec.check(q, k, v)
    B, T, N, H = q.shape
    S = k.shape[1]
    interpret = _triton_or_interpreter(interpret, "flash_attention_backward")
    call = _prepare(q, k, v, spec, block_q, block_k, interpret)
    Tp, Hp = call.q.shape[1], call.q.shape[3]

    def pad_rows(x_BTN):  # [B, T, N] -> [B, N, Tp]
        return _pad_axis(jnp.asarray(x_BTN, jnp.float32).transpose(0, 2, 1), 2, Tp)

    d_lse = jnp.zeros((B, T, N), jnp.float32) if d_lse is None else d_lse
    out_p = _pad_axis(_pad_axis(out, 1, Tp), 3, Hp)
    d_out_p = _pad_axis(_pad_axis(d_out, 1, Tp), 3, Hp)
    dq, dk, dv = _backward(call.cfg, call.q, call.k, call.v, call.aux, out_p, pad_rows(lse), d_out_p,
                           pad_rows(d_lse))
    return dq[:, :T, :, :H], dk[:, :S, :, :H], dv[:, :S, :, :H]


@implementation(name="flash", unsupported={"bias", "mask"},
                alternatives="alibi_slopes for ALiBi, or 'dense' / 'blockwise' for an arbitrary bias or mask")
def flash_attention(
    q: Array,
    k: Array,
    v: Array,
    spec: AttentionSpec,
    *,
    block_q: int = 64,
    block_k: int = 64,
    interpret: bool | None = None,
) -> Array:
    """Flash attention over `[B, T, N, H]` queries and `[B, S, K, H]` keys/values.

    Args:
      q, k, v: queries `[B, T, N, H]`, keys and values `[B, S, K, H]`, N % K == 0.
      spec: an `AttentionSpec` (or its fields as keyword arguments). Not supported: a
        materialised `bias` or `mask` (a `[T, S]` array defeats the kernel; ALiBi goes as
        `alibi_slopes`, evaluated per tile). Explicit `q_positions` / `k_positions` turn off
        block skipping (every tile is visited and masked).
      block_q, block_k: tile sizes, powers of two (>= 16 to compile with Triton); clamped
        to the padded sequence lengths.
      interpret: None = Pallas interpreter on CPU, Triton on GPU, splash attention on TPU;
        True forces the interpreter, False builds the Triton kernels on any backend (on a
        CPU they can be lowered for "cuda", `jit(...).trace(...).lower(lowering_platforms=
        ("cuda",))`, but not run). Tiles, warps and pipelining per kernel come from
        `kernels/gpu_plan.py` (never larger than block_q / block_k).

    Returns:
      `[B, T, N, H]` in q's dtype. Rows with no allowed key are zero, with zero gradients.
    """
    if interpret is None and jax.default_backend() == "tpu":
        if spec.alibi_slopes is not None or not spec.default_positions:
            raise ValueError("flash_attention on TPU (splash) takes no alibi_slopes or explicit positions")
        return splash_attention(
            q, k, v, spec.pattern, scale=spec.scale_for(q.shape[3]), segment_ids=spec.segment_ids,
            kv_segment_ids=spec.kv_segment_ids, logit_soft_cap=spec.logit_soft_cap,
            block_q=max(block_q, 128), block_k=max(block_k, 128),
        )
    return flash_attention_with_lse(q, k, v, spec, block_q=block_q, block_k=block_k, interpret=interpret)[0]
