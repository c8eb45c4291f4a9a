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
positions), "cpu_decode" (its decode-step sibling: a few query rows at explicit positions over
a cache in place), "ring" (context parallel over a mesh axis) and whatever `register` adds.
"auto" picks by backend with an `AutoPolicy`: GPU -> flash (cudnn if flash is missing);
Hopper and newer (compute capability >= 9.0, where JAX deprecates Pallas' Triton lowering
from 0.11) -> cudnn for every spec it expresses natively (`cudnn_expresses`), flash for the
rest; TPU -> flash (splash), CPU -> cpu_decode for at most 16 query rows (a decode step),
else cpu_flash (where it cannot be built: dense for short sequences, blockwise for long
ones); a spec the pick cannot take goes to dense when its logits are small (a decoded
token; on the CPU at most 16 query rows) and to blockwise otherwise.
"""

import dataclasses
import importlib
import re
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
      backward_target: same for `fn(q, k, v, out, lse, d_out, d_lse, spec, **options) ->
        (dq, dk, dv)`, the gradient from a saved output and lse (which may be those of a
        larger softmax, as in ring attention), or None.
    """

    name: str
    target: str | AttentionFn
    lse_target: str | AttentionFn | None = None
    backward_target: str | AttentionFn | None = None

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

    def backward(self) -> AttentionFn:
        """The gradient-from-(out, lse) function; ValueError when the implementation has none."""
        if self.backward_target is None:
            names = sorted(n for n, e in REGISTRY.items() if e.backward_target is not None)
            raise ValueError(f"impl {self.name!r} has no backward from (out, lse); those that do: {names}")
        return self._load(self.backward_target)

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
                       "longctx_jax.attention.blockwise:blockwise_attention_with_lse",
                       "longctx_jax.attention.blockwise:blockwise_attention_backward"),
        Implementation("xla", xla_attention),
        Implementation("cudnn", cudnn_attention),
        Implementation("flash", "longctx_jax.attention.flash:flash_attention",
                       "longctx_jax.attention.flash:flash_attention_with_lse",
                       "longctx_jax.attention.flash:flash_attention_backward"),
        # cpu_flash's own gradient is blockwise's tile recomputation from its out and lse.
        Implementation("cpu_flash", "longctx_jax.attention.cpu_flash:cpu_flash_attention",
                       "longctx_jax.attention.cpu_flash:cpu_flash_attention_with_lse",
                       "longctx_jax.attention.blockwise:blockwise_attention_backward"),
        Implementation("cpu_decode", "longctx_jax.attention.cpu_decode:cpu_decode_attention",
                       "longctx_jax.attention.cpu_decode:cpu_decode_attention_with_lse",
                       "longctx_jax.attention.blockwise:blockwise_attention_backward"),
        Implementation("ring", "longctx_jax.attention.ring:ring_attention"),
    )
}


def register(name: str, fn: AttentionFn, *, lse_fn: AttentionFn | None = None,
             backward_fn: AttentionFn | None = None) -> None:
    """Adds (or replaces) implementation `name`.

    `fn` should be an `@implementation(...)` function, whose `unsupported` declaration the
    registry reads; a plain function is taken as supporting every field.
    """
    REGISTRY[name] = Implementation(name, fn, lse_fn, backward_fn)


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

    `gpu_hopper`: the choice on compute capability >= 9.0 (H100, H200, B200) for the specs
    cuDNN expresses natively (`cudnn_expresses`); other specs take `gpu`. `cpu`: the CPU
    choice at any length when it can be imported (cpu_flash is several times
    faster than dense even at 256 tokens); calls with at most `cpu_decode_max_q` query rows (a
    decode step) go to `cpu_decode` when it takes the spec (one pass over the cache in place,
    explicit positions included). Where it cannot (no C++ compiler), `cpu_short`
    when max(T, S) <= `cpu_dense_max_len` (its `[B, N, T, S]` float32 logits fit
    comfortably) and `cpu_long` above. A spec the pick cannot take goes to dense when its
    `[T, S]` logits are small (T * S <= `dense_max_logits`, e.g. one decoded token against any
    cache; on the CPU: at most `cpu_dense_max_q` query rows) and to `fallback` otherwise. The
    CPU rule is measured (2-core Zen 4, 9 / 3 heads x 64, segment ids, 2026-12-05, not
    committed): dense was 3.5x faster than blockwise for one query row against 8192 keys and
    level at 16 rows, but slower from 64 rows on (2.2x at 64 x 8192) and, forward and backward
    of a causal layer, 1.5x slower at 256 tokens and 7.1x at 2048 (a 2048-token LoRA step of
    SmolLM2 took 100 s under dense, 24 s under blockwise).
    """

    gpu: str = "flash"
    gpu_fallback: str = "cudnn"
    gpu_hopper: str = "cudnn"
    tpu: str = "flash"
    cpu: str = "cpu_flash"
    cpu_decode: str = "cpu_decode"
    cpu_decode_max_q: int = 16
    cpu_short: str = "dense"
    cpu_long: str = "blockwise"
    cpu_dense_max_len: int = 2048
    dense_max_logits: int = 2048 * 2048
    cpu_dense_max_q: int = 16
    fallback: str = "blockwise"


# Device kinds (`jax.Device.device_kind`) of the compute capabilities "auto" cares about, for
# descriptions without one (an `AbstractDevice`, a config): Hopper 9.0, Blackwell 10.0.
_KIND_CAPABILITY = (
    (re.compile(r"\bG?H(100|200|800|20)\b"), (9, 0)),
    (re.compile(r"\bG?B(100|200|300)\b"), (10, 0)),
)
_CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def compute_capability(
    device_kind: str | None = None, capability: str | None = None
) -> tuple[int, int] | None:
    """(major, minor) from a compute capability such as "9.0", else from a device kind.

    Args:
      device_kind: e.g. "NVIDIA H100 80GB HBM3" (Hopper and Blackwell names are known).
      capability: e.g. "9.0" (`jax.Device.compute_capability` on CUDA); wins when given.

    Returns:
      (major, minor), or None when neither says (treated as pre-Hopper).

    Raises:
      ValueError: `capability` is not "major.minor".
    """
    if capability is not None:
        parts = str(capability).split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"compute capability must look like '9.0', got {capability!r}")
        return int(parts[0]), int(parts[1])
    for pattern, value in _KIND_CAPABILITY:
        if device_kind and pattern.search(device_kind):
            return value
    return None


def cudnn_expresses(spec: AttentionSpec, dtype=None, head_dim: int | None = None) -> bool:
    """Whether cuDNN's fused attention computes `spec` natively.

    `jax.nn.dot_product_attention(implementation="cudnn")` takes causal or no mask, a causal
    sliding window (`local_window_size`, left side only), GQA, bfloat16 / float16 and a head
    dim that is a multiple of 8 up to 256 (Hopper's limit). Not: sinks, explicit positions,
    segments, soft-cap, a mask, and a bias or ALiBi (which it would take only as a
    materialised `[B, N, T, S]` array). `dtype` / `head_dim` None: not checked.
    """
    if not entry("cudnn").takes(spec) or spec.bias is not None or spec.alibi_slopes is not None:
        return False
    if spec.window is not None and not spec.causal:
        return False  # cuDNN's window has no right side
    if dtype is not None and jnp.dtype(dtype) not in _CUDNN_DTYPES:
        return False
    return head_dim is None or (head_dim % 8 == 0 and head_dim <= 256)


def _device_capability(device_kind: str | None, capability: str | None) -> tuple[int, int] | None:
    if device_kind is None and capability is None:
        device = jax.devices()[0]
        device_kind, capability = device.device_kind, getattr(device, "compute_capability", None)
    return compute_capability(device_kind, capability)


def choose(
    q_len: int, k_len: int, spec: AttentionSpec | dict | None = None, *, backend: str | None = None,
    policy: AutoPolicy | None = None, dtype=None, head_dim: int | None = None,
    device_kind: str | None = None, capability: str | None = None,
) -> str:
    """The implementation name "auto" resolves to for these lengths, spec and backend.

    Args:
      q_len, k_len: T and S.
      spec: the call's `AttentionSpec` (or a dict of its fields).
      backend: "cpu", "gpu"/"cuda"/"rocm" or "tpu"; default `jax.default_backend()`.
      policy: the `AutoPolicy`.
      dtype, head_dim: q's dtype and H (they decide whether cuDNN takes the call; None:
        not checked).
      device_kind, capability: the GPU as `jax.Device.device_kind` ("NVIDIA H100 80GB
        HBM3") or compute capability ("9.0"); both None on a GPU backend: the first
        device's. Compute capability >= 9.0 sends what cuDNN expresses to `policy.gpu_hopper`.
    """
    policy = policy or AutoPolicy()
    spec = make_spec(None, **spec) if isinstance(spec, dict) else (spec or AttentionSpec())
    backend = backend or jax.default_backend()
    if backend in ("gpu", "cuda", "rocm"):
        hopper = backend != "rocm" and (_device_capability(device_kind, capability) or (0, 0)) >= (9, 0)
        expresses = entry(policy.gpu_hopper).takes(spec) and (
            policy.gpu_hopper != "cudnn" or cudnn_expresses(spec, dtype, head_dim))
        if hopper and expresses:
            return policy.gpu_hopper
        name = policy.gpu if _importable(policy.gpu) else policy.gpu_fallback
    elif backend == "tpu":
        name = policy.tpu
    elif (q_len <= policy.cpu_decode_max_q and _importable(policy.cpu_decode)
          and entry(policy.cpu_decode).takes(spec)):
        name = policy.cpu_decode
    elif _importable(policy.cpu):
        name = policy.cpu
    else:
        name = policy.cpu_short if max(q_len, k_len) <= policy.cpu_dense_max_len else policy.cpu_long
    if not entry(name).takes(spec):
        if backend in ("gpu", "cuda", "rocm", "tpu"):
            small = q_len * k_len <= policy.dense_max_logits
        else:
            small = q_len <= policy.cpu_dense_max_q
        name = "dense" if small else policy.fallback
    return name


def _resolve(q: Array, k: Array, spec: AttentionSpec, impl: str, auto: AutoPolicy | dict | None) -> str:
    if impl != "auto":
        return impl
    policy = AutoPolicy(**auto) if isinstance(auto, dict) else auto
    return choose(q.shape[1], k.shape[1], spec, policy=policy, dtype=q.dtype, head_dim=q.shape[3])


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
    # flash on TPU is splash, which returns no lse here
    no_lse = entry(name).lse_target is None or (name == "flash" and jax.default_backend() == "tpu")
    if impl == "auto" and no_lse:
        name = (AutoPolicy(**auto) if isinstance(auto, dict) else auto or AutoPolicy()).fallback
    return entry(name).with_lse()(q, k, v, spec, **options)
