"""Chooses an attention implementation by name.

Every implementation takes the keyword arguments of `longctx_jax.attention.dense.attention`
(see docs/architecture.md). `attend(q, k, v, impl=name, **kwargs)` is the only call the
models make, so the choice is a config value (`config.model.attention.impl`).

Registry: "dense" (the oracle), "blockwise" (memory-efficient jnp), "xla" and "cudnn"
(`jax.nn.dot_product_attention` with our keyword arguments translated; arguments it cannot
express raise `ValueError`), "flash" (Pallas, imported on first use), "cpu_flash" (the fused
C++ CPU kernel: causal / window masks under default positions) and whatever other modules
add with `register` ("ring" registers itself). "auto" picks by backend with an
`AutoPolicy`: GPU -> flash (cudnn if flash is missing), TPU -> flash (splash), CPU ->
cpu_flash, the fused C++ kernel (where it cannot be built: dense for short sequences,
blockwise for long ones); implementations that cannot take the given arguments (a dense
`bias` or `mask` for flash, positions or sinks for cpu_flash, for example) fall back to
blockwise.
"""

import dataclasses
import importlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from longctx_jax.attention import dense
from longctx_jax.attention.blockwise import blockwise_attention
from longctx_jax.attention.masks import AttentionMask, allowed_BTS, default_positions
from longctx_jax.positional.alibi import alibi_bias
from longctx_jax.typing import Array

AttentionFn = Callable[..., Array]


def _materialised_mask_and_bias(q: Array, k: Array, kwargs: dict):
    """Translates our kwargs to jax.nn.dot_product_attention's (bias, mask, is_causal, window).

    With default positions and no sinks, causal / window pass through natively
    (is_causal / local_window_size); everything else becomes a dense boolean mask
    `[B, 1, T, S]` or an additive bias `[B|1, N|1, T, S]`. Pops what it uses from kwargs.
    """
    B, T = q.shape[:2]
    S = k.shape[1]
    causal = kwargs.pop("causal", True)
    window = kwargs.pop("window", None)
    sinks = kwargs.pop("sinks", 0)
    bias = kwargs.pop("bias", None)
    slopes = kwargs.pop("alibi_slopes", None)
    seg = kwargs.pop("segment_ids", None)
    kv_seg = kwargs.pop("kv_segment_ids", None)
    q_pos = kwargs.pop("q_positions", None)
    k_pos = kwargs.pop("k_positions", None)
    mask = kwargs.pop("mask", None)
    default_pos = q_pos is None and k_pos is None
    q_pos = default_positions(B, T) if q_pos is None else jnp.broadcast_to(q_pos, (B, T))
    k_pos = default_positions(B, S) if k_pos is None else jnp.broadcast_to(k_pos, (B, S))
    if slopes is not None:
        alibi = alibi_bias(slopes, q_pos, k_pos)
        bias = alibi if bias is None else jnp.asarray(bias, jnp.float32) + alibi
    natively = default_pos and not sinks
    is_causal, local = False, None
    if natively:
        is_causal = causal
        if window is not None:
            local = (window - 1, 0 if causal else window - 1)
    if (not natively and (causal or window is not None)) or seg is not None:
        pattern = AttentionMask(causal, window, sinks) if not natively else AttentionMask(False)
        allowed = allowed_BTS(pattern, q_pos, k_pos, seg, kv_seg)[:, None]
        mask = allowed if mask is None else allowed & jnp.asarray(mask, bool)
    return bias, mask, is_causal, local


def argument_given(value) -> bool:
    """An argument counts as given unless it is None or the integer 0 (e.g. `sinks=0`)."""
    return value is not None and not (isinstance(value, int) and value == 0)


def _jax_nn_attention(implementation: str) -> AttentionFn:
    def attention(q: Array, k: Array, v: Array, **kwargs) -> Array:
        kwargs = dict(kwargs)
        if kwargs.pop("logit_soft_cap", None) is not None:
            raise ValueError(
                f"impl {implementation!r} cannot apply logit_soft_cap; use 'dense' or 'blockwise'"
            )
        scale = kwargs.pop("scale", None)
        if implementation == "cudnn":
            for name in ("sinks", "segment_ids", "kv_segment_ids", "q_positions", "k_positions", "mask"):
                if argument_given(kwargs.get(name)):
                    raise ValueError(
                        f"impl 'cudnn' cannot express {name}={kwargs[name]!r} without a dense mask; "
                        "use 'flash', 'blockwise' or 'xla'"
                    )
        bias, mask, is_causal, local = _materialised_mask_and_bias(q, k, kwargs)
        if kwargs:
            raise ValueError(f"impl {implementation!r} got unknown arguments {sorted(kwargs)}")
        if bias is not None:
            bias = jnp.asarray(bias, q.dtype if implementation == "cudnn" else jnp.float32)
            bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
        out = jax.nn.dot_product_attention(
            q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
            local_window_size=local, implementation=implementation,
        )
        if mask is not None:  # jax.nn averages fully masked rows; our contract is zeros
            keep = jnp.any(jnp.broadcast_to(mask, (q.shape[0], mask.shape[1]) + mask.shape[2:]), axis=-1)
            out = jnp.where(keep.transpose(0, 2, 1)[..., None], out, 0)
        return out.astype(q.dtype)

    attention.__name__ = f"{implementation}_attention"
    return attention


IMPLEMENTATIONS: dict[str, AttentionFn] = {
    "dense": dense.attention,
    "blockwise": blockwise_attention,
    "xla": _jax_nn_attention("xla"),
    "cudnn": _jax_nn_attention("cudnn"),
}

# Implementations imported on first use ("module:function"), so a missing optional module
# (or one whose import needs a particular backend) never breaks the others.
LAZY_IMPLEMENTATIONS: dict[str, str] = {"flash": "longctx_jax.attention.flash:flash_attention"}
LAZY_IMPLEMENTATIONS["ring"] = "longctx_jax.attention.ring:ring_attention"
LAZY_IMPLEMENTATIONS["cpu_flash"] = "longctx_jax.attention.cpu_flash:cpu_flash_attention"

# Keyword arguments an implementation rejects; "auto" routes such calls to blockwise.
UNSUPPORTED: dict[str, frozenset[str]] = {
    "flash": frozenset({"bias", "mask"}),
    "cudnn": frozenset(
        {"logit_soft_cap", "sinks", "segment_ids", "kv_segment_ids", "q_positions", "k_positions", "mask"}
    ),
    "xla": frozenset({"logit_soft_cap"}),
    "cpu_flash": frozenset(
        {"sinks", "bias", "alibi_slopes", "segment_ids", "kv_segment_ids", "q_positions", "k_positions",
         "mask", "logit_soft_cap"}
    ),
}


def register(name: str, fn: AttentionFn, *, unsupported: frozenset[str] = frozenset()) -> None:
    """Adds (or replaces) implementation `name`; `unsupported` lists kwargs it rejects."""
    IMPLEMENTATIONS[name] = fn
    LAZY_IMPLEMENTATIONS.pop(name, None)
    if unsupported:
        UNSUPPORTED[name] = frozenset(unsupported)


def available() -> list[str]:
    """Names `attend` accepts (lazy ones included), plus "auto"."""
    return sorted(set(IMPLEMENTATIONS) | set(LAZY_IMPLEMENTATIONS) | {"auto"})


def get_implementation(name: str) -> AttentionFn:
    """The function registered as `name`, importing a lazy one on first use."""
    if name in IMPLEMENTATIONS:
        return IMPLEMENTATIONS[name]
    if name in LAZY_IMPLEMENTATIONS:
        module, attr = LAZY_IMPLEMENTATIONS[name].split(":")
        register(name, getattr(importlib.import_module(module), attr))
        return IMPLEMENTATIONS[name]
    raise ValueError(f"unknown attention impl {name!r}; valid: {available()}")


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
    comfortably) and `cpu_long` above.
    """

    gpu: str = "flash"
    gpu_fallback: str = "cudnn"
    tpu: str = "flash"
    cpu: str = "cpu_flash"
    cpu_short: str = "dense"
    cpu_long: str = "blockwise"
    cpu_dense_max_len: int = 2048
    fallback: str = "blockwise"


def choose(
    q_len: int, k_len: int, kwargs: dict | None = None, *, backend: str | None = None,
    policy: AutoPolicy | None = None,
) -> str:
    """The implementation name "auto" resolves to for these lengths, kwargs and backend."""
    policy = policy or AutoPolicy()
    backend = backend or jax.default_backend()
    if backend == "gpu" or backend == "cuda" or backend == "rocm":
        name = policy.gpu if _importable(policy.gpu) else policy.gpu_fallback
    elif backend == "tpu":
        name = policy.tpu
    elif _importable(policy.cpu):
        name = policy.cpu
    else:
        name = policy.cpu_short if max(q_len, k_len) <= policy.cpu_dense_max_len else policy.cpu_long
    given = {key for key, value in (kwargs or {}).items() if argument_given(value)}
    if given & UNSUPPORTED.get(name, frozenset()):
        name = policy.fallback
    return name


def attend(
    q: Array, k: Array, v: Array, *, impl: str = "dense", auto: AutoPolicy | dict | None = None, **kwargs
) -> Array:
    """Runs the attention implementation called `impl` on `[B, T, N, H]` / `[B, S, K, H]`.

    `impl="auto"` resolves through `choose` with `auto` (an `AutoPolicy` or a dict of its
    fields) on the default backend.
    """
    if impl == "auto":
        policy = AutoPolicy(**auto) if isinstance(auto, dict) else auto
        impl = choose(q.shape[1], k.shape[1], kwargs, policy=policy)
    return get_implementation(impl)(q, k, v, **kwargs)
