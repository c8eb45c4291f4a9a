"""The attention registry: every implementation by name, what it supports, and "auto".

Every implementation takes `(q, k, v, spec: AttentionSpec, **options)` (or the spec's fields
as keyword arguments; see `spec.py`), so the choice is a config value
(`config.model.attention.impl`) and `attend(q, k, v, spec, impl=name)` is the only call the
models make. Each `Implementation` entry names its function (imported on first use, so a
missing optional module or one whose import needs a particular backend never breaks the
others), the function that also returns the log-sum-exp where there is one (patterns that
mix softmaxes, such as LongNet's branches, and ring attention consume that), and the spec
fields it cannot express, which the implementation itself declares in its
`@implementation(unsupported=...)`.

Registry: "dense" (the oracle), "blockwise" (memory-efficient jnp), "xla" and "cudnn"
(`jax.nn.dot_product_attention`; fields it cannot express raise `ValueError`), "flash"
(Pallas), "cpu_flash" (the fused C++ CPU kernel: causal / window masks under default
positions), "ring" (context parallel over a mesh axis) and whatever `register` adds.
"auto" picks by backend with an `AutoPolicy`: GPU -> flash (cudnn if flash is missing),
TPU -> flash (splash), CPU -> cpu_flash (where it cannot be built: dense for short
sequences, blockwise for long ones); a spec the pick cannot take goes to dense when its
logits are small (a decoded token) and to blockwise otherwise.
"""

import dataclasses
import importlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from longctx_jax.attention.masks import AttentionMask, allowed_BTS
from longctx_jax.attention.spec import AttentionSpec, implementation, make_spec, split_fields
from longctx_jax.positional.alibi import alibi_bias
from longctx_jax.typing import Array

AttentionFn = Callable[..., Array]


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One registry entry.

    Attributes:
      name: the `impl` string.
      target: "module:function" imported on first use, or the function itself.
      lse_target: same for the variant returning (out, lse `[B, T, N]` float32), or None.
    """

    name: str
    target: str | AttentionFn
    lse_target: str | AttentionFn | None = None

    @staticmethod
    def _load(target: str | AttentionFn) -> AttentionFn:
        if callable(target):
            return target
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def function(self) -> AttentionFn:
        """The implementation (imports its module on first use; ImportError if it cannot)."""
        return self._load(self.target)

    def with_lse(self) -> AttentionFn:
        """The (out, lse) variant; ValueError when the implementation has none."""
        if self.lse_target is None:
            with_lse = sorted(n for n, e in REGISTRY.items() if e.lse_target is not None)
            raise ValueError(f"impl {self.name!r} returns no log-sum-exp; those that do: {with_lse}")
        return self._load(self.lse_target)

    @property
    def unsupported(self) -> frozenset[str]:
        """Spec fields the implementation declared it cannot express."""
        return getattr(self.function(), "unsupported", frozenset())

    def takes(self, spec: AttentionSpec) -> bool:
        """Whether every field given in `spec` is one this implementation expresses."""
        return not (spec.given() & self.unsupported)


def _jax_nn_mask_and_bias(q: Array, k: Array, spec: AttentionSpec):
    """Our spec as jax.nn.dot_product_attention's (bias, mask, is_causal, local_window_size).

    With default positions and no sinks, causal / window pass through natively; everything
    else becomes a boolean mask `[B, 1|N, T, S]` or an additive bias `[B|1, N|1, T, S]`.
    """
    B, T = q.shape[:2]
    S = k.shape[1]
    q_pos, k_pos = spec.positions(B, T, S)
    bias = spec.bias
    if spec.alibi_slopes is not None:
        alibi = alibi_bias(spec.alibi_slopes, q_pos, k_pos)
        bias = alibi if bias is None else jnp.asarray(bias, jnp.float32) + alibi
    mask = spec.mask(q_pos, k_pos) if callable(spec.mask) else spec.mask
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    natively = spec.default_positions and not spec.sinks
    is_causal, local = False, None
    if natively:
        is_causal = spec.causal
        if spec.window is not None:
            local = (spec.window - 1, 0 if spec.causal else spec.window - 1)
    if (not natively and (spec.causal or spec.window is not None)) or spec.segment_ids is not None:
        pattern = spec.pattern if not natively else AttentionMask(False)
        allowed = allowed_BTS(pattern, q_pos, k_pos, spec.segment_ids, spec.kv_segment_ids)[:, None]
        mask = allowed if mask is None else allowed & mask
    return bias, mask, is_causal, local


def _jax_nn_attention(name: str, unsupported: frozenset[str]) -> AttentionFn:
    @implementation(name=name, unsupported=unsupported, alternatives="'flash', 'blockwise' or 'dense'")
    def attention(q: Array, k: Array, v: Array, spec: AttentionSpec) -> Array:
        bias, mask, is_causal, local = _jax_nn_mask_and_bias(q, k, spec)
        if bias is not None:
            bias = jnp.asarray(bias, q.dtype if name == "cudnn" else jnp.float32)
            bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
        out = jax.nn.dot_product_attention(
            q, k, v, bias=bias, mask=mask, scale=spec.scale, is_causal=is_causal,
            local_window_size=local, implementation=name,
        )
        if mask is not None:  # jax.nn averages fully masked rows; our contract is zeros
            keep = jnp.any(jnp.broadcast_to(mask, (q.shape[0], mask.shape[1]) + mask.shape[2:]), axis=-1)
            out = jnp.where(keep.transpose(0, 2, 1)[..., None], out, 0)
        return out.astype(q.dtype)

    attention.__name__ = attention.__qualname__ = f"{name}_attention"
    return attention


xla_attention = _jax_nn_attention("xla", frozenset({"logit_soft_cap"}))
cudnn_attention = _jax_nn_attention(
    "cudnn",
    frozenset({"logit_soft_cap", "sinks", "segment_ids", "kv_segment_ids", "q_positions", "k_positions",
               "mask"}),
)

REGISTRY: dict[str, Implementation] = {
    entry.name: entry
    for entry in (
        Implementation("dense", "longctx_jax.attention.dense:attention",
                       "longctx_jax.attention.dense:attention_with_lse"),
        Implementation("blockwise", "longctx_jax.attention.blockwise:blockwise_attention",
                       "longctx_jax.attention.blockwise:blockwise_attention_with_lse"),
        Implementation("xla", xla_attention),
        Implementation("cudnn", cudnn_attention),
        Implementation("flash", "longctx_jax.attention.flash:flash_attention"),
        Implementation("cpu_flash", "longctx_jax.attention.cpu_flash:cpu_flash_attention",
                       "longctx_jax.attention.cpu_flash:cpu_flash_attention_with_lse"),
        Implementation("ring", "longctx_jax.attention.ring:ring_attention"),
    )
}


def register(name: str, fn: AttentionFn, *, lse_fn: AttentionFn | None = None) -> None:
    """Adds (or replaces) implementation `name`.

    `fn` should be an `@implementation(...)` function, whose `unsupported` declaration the
    registry reads; a plain function is taken as supporting every field.
    """
    REGISTRY[name] = Implementation(name, fn, lse_fn)


def available() -> list[str]:
    """Names `attend` accepts, plus "auto"."""
    return sorted(set(REGISTRY) | {"auto"})


def entry(name: str) -> Implementation:
    """The registry entry `name`; ValueError listing the valid names otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown attention impl {name!r}; valid: {available()}")
    return REGISTRY[name]


def get_implementation(name: str) -> AttentionFn:
    """The function registered as `name`, importing it on first use."""
    return entry(name).function()


def _importable(name: str) -> bool:
    try:
        get_implementation(name)
    except ImportError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class AutoPolicy:
    """What "auto" picks per backend. Override from config (`config.model.attention.auto`).

    `cpu`: the CPU choice at any length when it can be imported (cpu_flash is several times
    faster than dense even at 256 tokens). Where it cannot (no C++ compiler), `cpu_short`
    when max(T, S) <= `cpu_dense_max_len` (its `[B, N, T, S]` float32 logits fit
    comfortably) and `cpu_long` above. A spec the pick cannot take goes to dense when its
    `[T, S]` logits are small (T * S <= `dense_max_logits`, e.g. one decoded token against any
    cache) and to `fallback` otherwise.
    """

    gpu: str = "flash"
    gpu_fallback: str = "cudnn"
    tpu: str = "flash"
    cpu: str = "cpu_flash"
    cpu_short: str = "dense"
    cpu_long: str = "blockwise"
    cpu_dense_max_len: int = 2048
    dense_max_logits: int = 2048 * 2048
    fallback: str = "blockwise"


def choose(
    q_len: int, k_len: int, spec: AttentionSpec | dict | None = None, *, backend: str | None = None,
    policy: AutoPolicy | None = None,
) -> str:
    """The implementation name "auto" resolves to for these lengths, spec and backend.

    Args:
      q_len, k_len: T and S.
      spec: the call's `AttentionSpec` (or a dict of its fields).
      backend: "cpu", "gpu"/"cuda"/"rocm" or "tpu"; default `jax.default_backend()`.
      policy: the `AutoPolicy`.
    """
    policy = policy or AutoPolicy()
    spec = make_spec(None, **spec) if isinstance(spec, dict) else (spec or AttentionSpec())
    backend = backend or jax.default_backend()
    if backend in ("gpu", "cuda", "rocm"):
        name = policy.gpu if _importable(policy.gpu) else policy.gpu_fallback
    elif backend == "tpu":
        name = policy.tpu
    elif _importable(policy.cpu):
        name = policy.cpu
    else:
        name = policy.cpu_short if max(q_len, k_len) <= policy.cpu_dense_max_len else policy.cpu_long
    if not entry(name).takes(spec):
        name = "dense" if q_len * k_len <= policy.dense_max_logits else policy.fallback
    return name


def _resolve(q: Array, k: Array, spec: AttentionSpec, impl: str, auto: AutoPolicy | dict | None) -> str:
    if impl != "auto":
        return impl
    policy = AutoPolicy(**auto) if isinstance(auto, dict) else auto
    return choose(q.shape[1], k.shape[1], spec, policy=policy)


def attend(
    q: Array, k: Array, v: Array, spec: AttentionSpec | None = None, /, *, impl: str = "dense",
    auto: AutoPolicy | dict | None = None, **kwargs
) -> Array:
    """Runs implementation `impl` on `[B, T, N, H]` / `[B, S, K, H]` with `spec`.

    Args:
      q, k, v: queries, keys and values.
      spec: the `AttentionSpec`; spec fields may also (or instead) be keyword arguments.
      impl: a registry name or "auto" (resolved through `choose` with `auto`, an
        `AutoPolicy` or a dict of its fields, on the default backend).
      **kwargs: spec fields and the implementation's own options (block sizes, mesh, ...).

    Returns:
      `[B, T, N, H]` in q's dtype.
    """
    fields, options = split_fields(kwargs)
    spec = make_spec(spec, **fields)
    return get_implementation(_resolve(q, k, spec, impl, auto))(q, k, v, spec, **options)


def attend_with_lse(
    q: Array, k: Array, v: Array, spec: AttentionSpec | None = None, /, *, impl: str = "dense",
    auto: AutoPolicy | dict | None = None, **kwargs
) -> tuple[Array, Array]:
    """`attend` returning (out `[B, T, N, H]`, lse `[B, T, N]` float32); rows with no key: 0, 0.

    "auto" falls back to blockwise where its pick has no log-sum-exp variant.
    """
    fields, options = split_fields(kwargs)
    spec = make_spec(spec, **fields)
    name = _resolve(q, k, spec, impl, auto)
    if impl == "auto" and entry(name).lse_target is None:
        name = (AutoPolicy(**auto) if isinstance(auto, dict) else auto or AutoPolicy()).fallback
    return entry(name).with_lse()(q, k, v, spec, **options)
