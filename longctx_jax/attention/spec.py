"""`AttentionSpec`: the one description of an attention call that every implementation takes.

    out = softmax(soft_cap(scale * q k^T) + bias + alibi, allowed) v
    allowed(i, j) = AttentionMask(causal, window, sinks)(q_pos_i, k_pos_j)
                    and seg_i == kv_seg_j and mask[i, j]

over queries `q [B, T, N, H]` and keys / values `k, v [B, S, K, H]` (N % K == 0). The spec
holds everything but the three arrays: the mask pattern (`causal`, `window`, `sinks`, an
arbitrary boolean `mask` array or a per-tile mask callable), true positions, packed-document
segment ids, an additive `bias` or ALiBi slopes, the logit `scale` and soft-cap.

Implementations are written as `fn(q, k, v, spec, **options)` under `@implementation(...)`,
which (1) lets callers pass the spec's fields as keyword arguments instead
(`fn(q, k, v, causal=True, window=128)`), (2) validates the shapes of q, k, v and of every
array in the spec before any work, and (3) refuses, with a `ValueError` naming the field and
the implementations that take it, any field the implementation declared it cannot express.
The registry (`dispatch.py`) reads those declarations; this module imports no implementation.

The spec is a pytree: its arrays are leaves, its Python options (and a mask callable) are
static, so it can cross `jax.jit` and `shard_map` boundaries.
"""

import dataclasses
import difflib
import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from longctx_jax.attention.masks import AttentionMask, default_positions
from longctx_jax.typing import Array, ArrayLike

# (q_positions [B, t], k_positions [B, s]) -> bool [B|1, N|1, t, s]: a pattern evaluated per tile.
MaskFn = Callable[[Array, Array], Array]

_ARRAY_FIELDS = ("bias", "alibi_slopes", "segment_ids", "kv_segment_ids", "q_positions", "k_positions")
_STATIC_FIELDS = ("causal", "window", "sinks", "logit_soft_cap", "scale")


def argument_given(value: Any) -> bool:
    """A spec field counts as given unless it is None, False-like default 0 (`sinks=0`)."""
    return value is not None and not (isinstance(value, numbers.Integral) and not isinstance(value, bool)
                                      and value == 0)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Mask, positions, bias, scale and soft-cap of one attention call (see module docstring).

    Attributes:
      causal: keys after the query's position are masked.
      window: number of most recent keys (own position included) a query may see, or None.
      sinks: the first `sinks` positions stay visible outside the window (StreamingLLM).
      bias: additive float logits bias broadcastable to `[B, N, T, S]`.
      alibi_slopes: `[N]` ALiBi slopes; adds -slope * |q_pos - k_pos|.
      segment_ids: `[B, T]` packed-document ids of the queries (and of the keys when
        `kv_segment_ids` is None); tokens attend only within their document.
      kv_segment_ids: `[B, S]` document ids of the keys.
      q_positions, k_positions: `[B, T]` / `[B, S]` true integer positions (default 0..len-1).
      mask: boolean array broadcastable to `[B, N, T, S]` (True = may attend), or a hashable
        `MaskFn` evaluated on true positions (the pattern objects of `attention.patterns`).
      logit_soft_cap: if set, logits become cap * tanh(logits / cap) (Gemma 2).
      scale: logit scale, default 1 / sqrt(head_dim).
    """

    causal: bool = True
    window: int | None = None
    sinks: int = 0
    bias: ArrayLike | None = None
    alibi_slopes: ArrayLike | None = None
    segment_ids: ArrayLike | None = None
    kv_segment_ids: ArrayLike | None = None
    q_positions: ArrayLike | None = None
    k_positions: ArrayLike | None = None
    mask: ArrayLike | MaskFn | None = None
    logit_soft_cap: float | None = None
    scale: float | None = None

    def __post_init__(self):
        if not isinstance(self.causal, bool | np.bool_):
            raise ValueError(f"causal must be True or False, got {self.causal!r}")
        if self.window is not None and (
            isinstance(self.window, bool) or not isinstance(self.window, numbers.Integral) or self.window < 1
        ):
            raise ValueError(f"window must be a positive integer number of keys or None, got {self.window!r}")
        if isinstance(self.sinks, bool) or not isinstance(self.sinks, numbers.Integral) or self.sinks < 0:
            raise ValueError(f"sinks must be an integer >= 0, got {self.sinks!r}")
        for name in ("logit_soft_cap", "scale"):
            value = getattr(self, name)
            positive = isinstance(value, numbers.Real) and math.isfinite(value) and value > 0
            if value is not None and not positive:
                raise ValueError(f"{name} must be a positive finite number or None, got {value!r}")
        object.__setattr__(self, "causal", bool(self.causal))
        if self.window is not None:
            object.__setattr__(self, "window", int(self.window))
        object.__setattr__(self, "sinks", int(self.sinks))

    # ---- pytree -------------------------------------------------------------------------
    def tree_flatten(self):
        mask_is_fn = callable(self.mask)
        children = tuple(getattr(self, n) for n in _ARRAY_FIELDS) + ((None if mask_is_fn else self.mask),)
        static = tuple(getattr(self, n) for n in _STATIC_FIELDS) + ((self.mask if mask_is_fn else None),)
        return children, static

    @classmethod
    def tree_unflatten(cls, static, children):
        *arrays, mask = children
        *options, mask_fn = static
        fields = dict(zip(_ARRAY_FIELDS, arrays, strict=True))
        fields |= dict(zip(_STATIC_FIELDS, options, strict=True))
        obj = object.__new__(cls)
        for name, value in fields.items():
            object.__setattr__(obj, name, value)
        object.__setattr__(obj, "mask", mask_fn if mask_fn is not None else mask)
        return obj

    # ---- derived facts ------------------------------------------------------------------
    @property
    def pattern(self) -> AttentionMask:
        """The causal / window / sinks part as an `AttentionMask`."""
        return AttentionMask(causal=self.causal, window=self.window, sinks=self.sinks)

    @property
    def default_positions(self) -> bool:
        """True when neither q_positions nor k_positions is given (positions 0..len-1)."""
        return self.q_positions is None and self.k_positions is None

    def given(self) -> frozenset[str]:
        """Names of the fields that are set beyond the plain causal/window contract."""
        plain = ("causal", "window", "scale")
        return frozenset(f.name for f in dataclasses.fields(self)
                         if f.name not in plain and argument_given(getattr(self, f.name)))

    def positions(self, batch: int, q_len: int, k_len: int) -> tuple[Array, Array]:
        """(`[B, T]` query, `[B, S]` key) positions: the given ones broadcast, else 0..len-1."""
        q_pos, k_pos = self.q_positions, self.k_positions
        q_pos = default_positions(batch, q_len) if q_pos is None else jnp.broadcast_to(q_pos, (batch, q_len))
        k_pos = default_positions(batch, k_len) if k_pos is None else jnp.broadcast_to(k_pos, (batch, k_len))
        return q_pos, k_pos

    def replace(self, **changes) -> "AttentionSpec":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def scale_for(self, head_dim: int) -> float:
        """The logit scale: `scale`, or 1 / sqrt(head_dim)."""
        return float(head_dim**-0.5 if self.scale is None else self.scale)

    # ---- validation ---------------------------------------------------------------------
    def check(self, q: Array, k: Array, v: Array) -> int:
        """Validates q, k, v and this spec's arrays against them; returns G = N / K.

        Raises:
          ValueError: naming the bad shape and what would be valid.
        """
        if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
            raise ValueError(
                f"q, k, v must be [batch, seq, heads, head_dim]; got {q.shape}, {k.shape}, {v.shape}"
            )
        B, T, N, H = q.shape
        S, K = k.shape[1], k.shape[2]
        if k.shape[:3] != v.shape[:3]:
            raise ValueError(f"k {k.shape} and v {v.shape} must agree in batch, seq and heads")
        if k.shape[0] != B or k.shape[3] != H:
            raise ValueError(f"q {q.shape} and k {k.shape} must agree in batch and head_dim")
        if v.shape[3] != H:
            raise ValueError(
                f"v head_dim {v.shape[3]} must equal the query/key head_dim {H} "
                f"(q {q.shape}, v {v.shape}); different value head dims are not supported"
            )
        if T == 0 or S == 0 or B == 0 or H == 0:
            raise ValueError(f"attention needs non-empty inputs; got q {q.shape}, k {k.shape}")
        if K <= 0 or N % K:
            raise ValueError(f"query heads ({N}) must be a positive multiple of key/value heads ({K})")
        for name, shape in (("q_positions", (B, T)), ("k_positions", (B, S)), ("segment_ids", (B, T)),
                            ("kv_segment_ids", (B, S))):
            _check_broadcast(name, getattr(self, name), shape, integer=True)
        if self.kv_segment_ids is not None and self.segment_ids is None:
            raise ValueError("kv_segment_ids needs segment_ids (the queries' document ids) too")
        if self.segment_ids is not None and self.kv_segment_ids is None and S != T:
            raise ValueError(f"segment_ids alone need T == S (got T={T}, S={S}); pass kv_segment_ids too")
        if self.alibi_slopes is not None and np.shape(self.alibi_slopes) != (N,):
            raise ValueError(f"alibi_slopes must have shape [N] = ({N},), got {np.shape(self.alibi_slopes)}")
        _check_broadcast("bias", self.bias, (B, N, T, S))
        if self.mask is not None and not callable(self.mask):
            _check_broadcast("mask", self.mask, (B, N, T, S))
        return N // K


def _check_broadcast(
    name: str, value: ArrayLike | None, shape: tuple[int, ...], integer: bool = False
) -> None:
    if value is None:
        return
    got = np.shape(value)
    try:
        if len(got) > len(shape):
            raise ValueError
        np.broadcast_shapes(got, shape)
        if np.broadcast_shapes(got, shape) != shape:
            raise ValueError
    except ValueError:
        raise ValueError(f"{name} of shape {got} does not broadcast to {shape}") from None
    if integer:
        dtype = jnp.result_type(value)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise ValueError(f"{name} must be integers, got dtype {dtype}")


def describe(value: Any) -> str:
    """A short description of a spec value for error messages (arrays by shape and dtype)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<{value.dtype} array {tuple(value.shape)}>"
    return repr(value)


def check_qkv(q: Array, k: Array, v: Array) -> int:
    """Validates `[B, T, N, H]` / `[B, S, K, H]` shapes alone; returns G = N / K."""
    return AttentionSpec().check(q, k, v)


SPEC_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AttentionSpec))


def make_spec(spec: AttentionSpec | None = None, **fields: Any) -> AttentionSpec:
    """`spec` with `fields` replaced (a new spec from `fields` when `spec` is None).

    Raises:
      TypeError: a name that is not an `AttentionSpec` field.
    """
    unknown = sorted(set(fields) - set(SPEC_FIELDS))
    if unknown:
        raise TypeError(f"unknown attention arguments {unknown}; AttentionSpec fields: {list(SPEC_FIELDS)}")
    if spec is None:
        return AttentionSpec(**fields)
    if not isinstance(spec, AttentionSpec):
        raise TypeError(f"spec must be an AttentionSpec, got {type(spec).__name__}")
    return spec.replace(**fields) if fields else spec


def split_fields(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`AttentionSpec` fields, everything else) of a keyword dict."""
    fields = {name: value for name, value in kwargs.items() if name in SPEC_FIELDS}
    return fields, {name: value for name, value in kwargs.items() if name not in SPEC_FIELDS}


def implementation(*, name: str, unsupported: frozenset[str] | set[str] = frozenset(),
                   alternatives: str = "'dense' or 'blockwise'"):
    """Decorates `fn(q, k, v, spec, **options)` as an attention implementation called `name`.

    The result takes `(q, k, v, spec=None, **kwargs)`, where kwargs may hold spec fields
    (merged into `spec`) and the implementation's own options; it checks shapes
    (`AttentionSpec.check`) and refuses the `unsupported` fields when given. `fn.unsupported`
    and `fn.implementation_name` record the declaration for the registry.
    """
    unsupported = frozenset(unsupported)
    bad = unsupported - set(SPEC_FIELDS)
    if bad:
        raise ValueError(f"{name}: unsupported names {sorted(bad)} are not AttentionSpec fields")

    def decorate(fn):
        own_options = [p for p in list(inspect.signature(fn).parameters)[4:]]

        @functools.wraps(fn)
        def wrapper(q: Array, k: Array, v: Array, spec: AttentionSpec | None = None, /, **kwargs):
            fields, options = split_fields(kwargs)
            unknown = sorted(set(options) - set(own_options))
            if unknown:
                names = SPEC_FIELDS + tuple(own_options)
                close = {u: difflib.get_close_matches(u, names, n=1) for u in unknown}
                hints = "; ".join(f"{u!r}: did you mean {c[0]!r}?" for u, c in close.items() if c)
                raise TypeError(
                    f"unknown attention arguments {unknown} for impl {name!r}"
                    + (f" ({hints})" if hints else "")
                    + f"; AttentionSpec fields: {list(SPEC_FIELDS)}; {name} options: {own_options}"
                )
            spec = make_spec(spec, **fields)
            refused = sorted(spec.given() & unsupported)
            if refused:
                given = ", ".join(f"{n}={describe(getattr(spec, n))}" for n in refused)
                raise ValueError(f"impl {name!r} cannot take {given}; use {alternatives}")
            spec.check(q, k, v)
            return fn(q, k, v, spec, **options)

        wrapper.unsupported = unsupported
        wrapper.implementation_name = name
        return wrapper

    return decorate
