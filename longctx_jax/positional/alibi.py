"""ALiBi: Attention with Linear Biases (Press, Smith & Lewis 2022, "Train Short, Test Long").

No position embedding is added; each head n adds a fixed penalty to its attention logits
    bias_n(i, j) = -m_n * |i - j|
with head slopes m_n a geometric sequence. For a power-of-two head count N,
    m_n = 2^(-8 n / N),  n = 1 .. N.
For other N, the paper takes the slopes of the closest power of two P < N, then the
first N - P odd-indexed slopes of 2P. Reproduced by `configs/repro_alibi.py`.
"""

import math

import jax.numpy as jnp
import numpy as np

from longctx_jax.typing import Array, ArrayLike


def _power_of_two_slopes(num_heads: int) -> list[float]:
    start = 2.0 ** (-8.0 / num_heads)
    return [start ** (n + 1) for n in range(num_heads)]


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Per-head slopes `[num_heads]` (float32), following the paper's rule."""
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = _power_of_two_slopes(closest)
    if closest != num_heads:
        slopes += _power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(slopes, dtype=np.float32)


def alibi_bias(slopes_N: ArrayLike, q_positions_BT: ArrayLike, k_positions_BS: ArrayLike) -> Array:
    """Materialised bias `[batch, heads, T, S]` = -slope * |q_pos - k_pos| (float32).

    Kernels do not call this: they evaluate the same expression per tile from the slopes
    and positions (`alibi_tile_bias`), so no `[T, S]` array is ever stored.
    """
    q_positions_BT = jnp.atleast_2d(jnp.asarray(q_positions_BT))
    k_positions_BS = jnp.atleast_2d(jnp.asarray(k_positions_BS))
    return alibi_tile_bias(
        jnp.asarray(slopes_N, jnp.float32)[None, :, None, None],
        q_positions_BT[:, None, :, None],
        k_positions_BS[:, None, None, :],
    )


def alibi_tile_bias(slopes: ArrayLike, q_positions: ArrayLike, k_positions: ArrayLike) -> Array:
    """-slope * |q - k| for broadcastable slope / position tiles, in float32."""
    distance = jnp.abs(jnp.asarray(q_positions) - jnp.asarray(k_positions)).astype(jnp.float32)
    return -jnp.asarray(slopes, jnp.float32) * distance
