"""Which (query, key) pairs may attend, as data.

`AttentionMask` covers the patterns that every implementation (reference, blockwise,
Pallas kernel, ring) supports natively: causal, a sliding window, and StreamingLLM's
attention sinks. Masks are functions of true token positions, not of array indices, so
packed, cached, permuted (ring load balancing) and re-indexed sequences all work.

    allowed(q, k) = (not causal or k <= q)
                    and (window is None or |q - k| < window or k < sinks)

`window` is the number of most recent keys, the query's own position included, that a
query may see (for a bidirectional mask, |q - k| < window on both sides).
"""

import dataclasses

import jax.numpy as jnp

from longctx_jax.typing import Array, ArrayLike


@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Causal / sliding-window / sink mask over true positions."""

    causal: bool = True
    window: int | None = None
    sinks: int = 0

    def __post_init__(self):
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be a positive number of keys or None, got {self.window}")
        if self.sinks < 0:
            raise ValueError(f"sinks must be >= 0, got {self.sinks}")

    def allowed(self, q_positions: ArrayLike, k_positions: ArrayLike) -> Array:
        """Boolean mask for broadcastable integer position arrays."""
        q = jnp.asarray(q_positions)
        k = jnp.asarray(k_positions)
        ok = jnp.ones(jnp.broadcast_shapes(q.shape, k.shape), dtype=bool)
        if self.causal:
            ok = ok & (k <= q)
        if self.window is not None:
            in_window = jnp.abs(q - k) < self.window
            if self.sinks:
                in_window = in_window | (k < self.sinks)
            ok = ok & in_window
        return ok


def default_positions(batch: int, length: int) -> Array:
    """`[batch, length]` int32 positions 0 .. length - 1."""
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


def allowed_BTS(
    mask: AttentionMask,
    q_positions_BT: ArrayLike,
    k_positions_BS: ArrayLike,
    q_segment_ids_BT: ArrayLike | None = None,
    kv_segment_ids_BS: ArrayLike | None = None,
) -> Array:
    """`[batch, T, S]` boolean mask from positions and optional packed-document segment ids."""
    q_pos = jnp.asarray(q_positions_BT)[:, :, None]
    k_pos = jnp.asarray(k_positions_BS)[:, None, :]
    ok = mask.allowed(q_pos, k_pos)
    if q_segment_ids_BT is not None:
        if kv_segment_ids_BS is None:
            kv_segment_ids_BS = q_segment_ids_BT
        ok = ok & (jnp.asarray(q_segment_ids_BT)[:, :, None] == jnp.asarray(kv_segment_ids_BS)[:, None, :])
    return ok
