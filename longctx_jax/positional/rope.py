"""Rotary position embeddings (Su et al. 2021, "RoFormer").

Plain RoPE rotates each pair of query/key channels (x_i, x_{i + H/2}) by the angle
    theta_i(p) = p * base^(-2i / H),   i = 0 .. H/2 - 1
so that q(m) . k(n) depends only on m - n. `rope_frequencies` returns the inverse
frequencies base^(-2i/H) (the scaling family changes these) and `apply_rope` rotates
`[batch, seq, heads, head_dim]` arrays from explicit integer positions.

Angles are always computed in float32 from integer positions, whatever the activation dtype.
"""

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from longctx_jax.typing import Array, ArrayLike


def rope_frequencies(
    head_dim: int,
    base: float,
    rope_scaling: Mapping[str, Any] | None = None,
    *,
    seq_len: int | None = None,
) -> tuple[np.ndarray, float]:
    """Inverse frequencies `[head_dim // 2]` (float32) and the attention factor.

    Args:
      head_dim: rotary dimension H (must be even).
      base: the RoPE base theta (10000 for Llama 2, 5e5 for Llama 3, 1e6 for Code Llama).
      rope_scaling: a Hugging Face `rope_scaling` mapping, or None for plain RoPE.
      seq_len: the current sequence length (used by length-dependent scalings).

    Returns:
      (inv_freq, attention_factor): the factor multiplies cos and sin.
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even integer, got {head_dim}")
    if rope_scaling is not None and rope_scaling.get("rope_type", rope_scaling.get("type", "default")) != "default":
        raise ValueError(f"unknown rope_type in {dict(rope_scaling)!r}; valid: 'default'")
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    inv_freq = 1.0 / (float(base) ** exponents)
    return inv_freq.astype(np.float32), 1.0


def apply_rope(
    x_BTNH: Array,
    positions_BT: ArrayLike,
    inv_freq: ArrayLike,
    attention_factor: float = 1.0,
    *,
    interleaved: bool = False,
) -> Array:
    """Rotates the first `2 * len(inv_freq)` channels of x by their positions.

    Args:
      x_BTNH: queries or keys `[batch, seq, heads, head_dim]`.
      positions_BT: integer position ids `[batch, seq]` (or `[seq]`).
      inv_freq: `[rotary_dim // 2]` inverse frequencies.
      attention_factor: multiplies cos and sin (YaRN / LongRoPE temperature).
      interleaved: pairs are (x_{2i}, x_{2i+1}) (GPT-J / original RoFormer) instead of
        the rotate-half layout (x_i, x_{i + rotary_dim/2}) used by Llama checkpoints.

    Returns:
      Rotated array, same shape and dtype as x.
    """
    positions_BT = jnp.asarray(positions_BT)
    if positions_BT.ndim == 1:
        positions_BT = positions_BT[None, :]
    inv_freq = jnp.asarray(inv_freq, jnp.float32)
    rotary_dim = 2 * inv_freq.shape[0]
    if rotary_dim > x_BTNH.shape[-1]:
        raise ValueError(f"rotary dim {rotary_dim} exceeds head_dim {x_BTNH.shape[-1]}")
    # Integer positions go to float32 once; the product stays exact to ~1e-7 relative.
    angles_BTR = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    cos = (jnp.cos(angles_BTR) * attention_factor)[:, :, None, :]
    sin = (jnp.sin(angles_BTR) * attention_factor)[:, :, None, :]
    x_rot, x_pass = x_BTNH[..., :rotary_dim], x_BTNH[..., rotary_dim:]
    x_rot = x_rot.astype(jnp.float32)
    if interleaved:
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
        rotated = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
        rotated = rotated.reshape(x_rot.shape)
    else:
        x1, x2 = jnp.split(x_rot, 2, axis=-1)
        rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return jnp.concatenate([rotated.astype(x_BTNH.dtype), x_pass], axis=-1)
