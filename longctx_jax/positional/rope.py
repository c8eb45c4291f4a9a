"""Rotary position embeddings (Su et al. 2021, "RoFormer") with every HF scaling.

Plain RoPE rotates each pair of query/key channels (x_i, x_{i + d/2}) by the angle
    theta_i(p) = p * base^(-2i / d),   i = 0 .. d/2 - 1   (d = rotary dim)
so that q(m) . k(n) depends only on m - n. `rope_frequencies` returns the inverse
frequencies (the scaling family in `rope_scaling.py` changes these) and the attention factor
that multiplies cos and sin; `apply_rope` rotates `[batch, seq, heads, head_dim]` arrays from
explicit integer positions (packed sequences, KV-cache offsets, StreamingLLM re-indexing).

Precision: angles are float32 whatever the activation dtype, and are computed from integer
positions without rounding the product p * inv_freq: the product is split into exact float32
pieces and reduced modulo one turn piece by piece (`rope_angles`), so position 1,000,000
gets the angle of the float32 `inv_freq` as accurately as position 10 (error < 1e-5 rad
against float64 for any int32 position; the plain float32 product would be off by up to
p * inv_freq * 2^-24, ~0.06 rad at p = 1e6).
"""

import functools
import math
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from longctx_jax.positional.rope_config import RopeConfig, rope_config_from_hf
from longctx_jax.positional.rope_types import resolve_rope_scaling, rotary_dim_of
from longctx_jax.typing import Array, ArrayLike

__all__ = [
    "RopeConfig", "apply_rope", "rope_angles", "rope_config_from_hf", "rope_frequencies", "rotary_dim_of",
]


def rope_frequencies(
    head_dim: int,
    base: float,
    rope_scaling: Mapping[str, Any] | None = None,
    *,
    seq_len: int | None = None,
) -> tuple[np.ndarray, float]:
    """Inverse frequencies `[rotary_dim // 2]` (float32) and the attention factor.

    The type's entry in the RoPE-type table (`rope_types.ROPE_TYPES`) validates the mapping
    and supplies both functions.

    Args:
      head_dim: attention head dim H. The rotary dim is int(H * partial_rotary_factor)
        (the factor read from `rope_scaling`, default 1) and must be even.
      base: the RoPE base theta (1e4 Llama 2, 5e5 Llama 3, 1e6 Code Llama).
      rope_scaling: a Hugging Face `rope_scaling` / `rope_parameters` mapping (`rope_type` or
        legacy `type`: default, linear, ntk, dynamic, yarn, llama3, longrope, with HF's field
        names) or None for plain RoPE. Types that need the pretrained length L need
        `original_max_position_embeddings`; `rope_config_from_hf` fills it from a config.json
        the way transformers does.
      seq_len: the current sequence length T (dynamic: base grows for T > L; longrope:
        long_factor for T > L, short_factor otherwise). None means T <= L.

    Returns:
      (inv_freq, attention_factor): `apply_rope` multiplies cos and sin by the factor
      (YaRN temperature, LongRoPE scaling; 1.0 for the other types).

    Raises:
      ValueError: unknown rope_type (the valid ones are listed), factor < 1, a missing or
        malformed field, an odd rotary dim or a non-positive base.
    """
    resolved = resolve_rope_scaling(head_dim, base, rope_scaling)
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, numbers.Integral)):
        raise ValueError(f"seq_len must be an integer or None, got {seq_len!r}")
    return resolved.inv_freq(seq_len).astype(np.float32), resolved.attention_factor()


def _split12(x: Array) -> tuple[Array, Array]:
    """float32 x = hi + lo exactly, each with at most 12 significant bits."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32) & jnp.uint32(0xFFFFF000)
    hi = jax.lax.bitcast_convert_type(bits, jnp.float32)
    return hi, x - hi


def _inv_two_pi_chunks() -> list[float]:
    """1 / (2 pi) as four float32 constants of 12 significant bits each (48 bits in all)."""
    rest, chunks = 1.0 / (2.0 * math.pi), []
    for _ in range(4):
        bits = np.array(rest, np.float32).view(np.uint32) & np.uint32(0xFFFFF000)
        chunk = float(bits.view(np.float32))
        chunks.append(chunk)
        rest -= chunk
    return chunks


_INV_TWO_PI = _inv_two_pi_chunks()


def _frac_turns(positions: Array, inv_freq_R: Array) -> Array:
    """(positions * inv_freq / 2 pi) modulo 1, in [-0.5, 0.5], accurate to ~1e-6 turns.

    turns = sum over pieces p_a * g_b, where p = sum of p_a (12-bit chunks of the int32
    position) and g = inv_freq / 2 pi = sum of g_b (12-bit pieces of the exact products of
    inv_freq's and 1/(2 pi)'s chunks). Every p_a * g_b is exact in float32 and its fractional
    part t - round(t) is exact too, so the only rounding is in summing numbers below one.
    """
    f_hi, f_lo = _split12(inv_freq_R)
    g_pieces = []
    for f in (f_hi, f_lo):
        for c in _INV_TWO_PI:
            g_pieces.extend(_split12(f * jnp.float32(c)))
    g_PR = jnp.stack(g_pieces[::-1])  # add small terms first
    p = positions.astype(jnp.int32)
    top = (p >> 24) << 24
    mid = ((p - top) >> 12) << 12
    p_chunks = [top, mid, p - top - mid]

    def add_piece(i, total):
        for chunk in p_chunks:
            t = chunk.astype(jnp.float32)[..., None] * g_PR[i]
            total = total + (t - jnp.round(t))
            total = total - jnp.round(total)
        return total

    # A loop, not 16 unrolled steps: its result is a fusion boundary. Unrolled, XLA:CPU fuses
    # the whole ~300-op reduction into every consumer and recomputes it for each head and
    # channel of the rotated q / k (15x slower at 8K tokens). The sums are identical.
    total = jnp.zeros(positions.shape + inv_freq_R.shape, jnp.float32)
    return jax.lax.fori_loop(0, g_PR.shape[0], add_piece, total)


@jax.jit
def _angles(
    positions_BT: Array, inv_freq: Array, unscaled_inv_freq: Array | None, num_unscaled: Array
) -> Array:
    turns_BTR = _frac_turns(positions_BT, inv_freq)
    if unscaled_inv_freq is not None:
        keep = (positions_BT < num_unscaled)[..., None]
        turns_BTR = jnp.where(keep, _frac_turns(positions_BT, unscaled_inv_freq), turns_BTR)
    return turns_BTR * jnp.float32(2 * math.pi)


def check_position_range(positions: ArrayLike) -> None:
    """Concrete positions wider than int32 must fit it: the angles are computed from int32."""
    if isinstance(positions, jax.core.Tracer):
        return  # traced values are unknown here; x64-disabled JAX traces int32 anyway
    dtype = getattr(positions, "dtype", None)
    if dtype is None:
        positions = np.asarray(positions)
        dtype = positions.dtype
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu" or np.can_cast(dtype, np.int32):
        return
    values = np.asarray(positions)
    if values.size == 0:
        return
    info = np.iinfo(np.int32)
    low, high = values.min(), values.max()
    if low < info.min or high > info.max:
        raise ValueError(
            f"positions must fit int32 [{info.min}, {info.max}] (RoPE angles are computed from int32), "
            f"got {dtype} values in [{low}, {high}]"
        )


def _checked(
    positions_BT: ArrayLike, inv_freq: ArrayLike, unscaled_inv_freq: ArrayLike | None
) -> tuple[Array, Array, Array | None]:
    check_position_range(positions_BT)
    positions_BT = jnp.asarray(positions_BT)
    if not jnp.issubdtype(positions_BT.dtype, jnp.integer):
        raise ValueError(f"positions must be integer position ids, got dtype {positions_BT.dtype}")
    if positions_BT.ndim == 1:
        positions_BT = positions_BT[None, :]
    if positions_BT.ndim != 2:
        raise ValueError(f"positions must be [batch, seq] or [seq], got shape {positions_BT.shape}")
    inv_freq = jnp.asarray(inv_freq, jnp.float32)
    if inv_freq.ndim != 1:
        raise ValueError(f"inv_freq must be [rotary_dim // 2], got shape {inv_freq.shape}")
    if unscaled_inv_freq is not None:
        unscaled_inv_freq = jnp.asarray(unscaled_inv_freq, jnp.float32)
        if unscaled_inv_freq.shape != inv_freq.shape:
            raise ValueError(
                f"unscaled_inv_freq shape {unscaled_inv_freq.shape} must equal inv_freq's {inv_freq.shape}"
            )
    return positions_BT.astype(jnp.int32), inv_freq, unscaled_inv_freq


def rope_angles(
    positions_BT: ArrayLike,
    inv_freq: ArrayLike,
    *,
    unscaled_inv_freq: ArrayLike | None = None,
    num_unscaled: int = 0,
) -> Array:
    """Rotation angles `[batch, seq, rotary_dim // 2]` in float32, reduced to [-pi, pi].

    Args:
      positions_BT: integer position ids `[batch, seq]` (or `[seq]`), any int32 value.
      inv_freq: `[rotary_dim // 2]` inverse frequencies (from `rope_frequencies`).
      unscaled_inv_freq: LongRoPE's "first n_hat positions are not interpolated" (Ding et
        al. 2024, sec. 3.2): positions p < num_unscaled use these frequencies (normally
        `rope_frequencies(head_dim, base)[0]`, plain RoPE) instead of `inv_freq`.
      num_unscaled: n_hat, the number of leading positions that keep `unscaled_inv_freq`.

    Returns:
      angle[b, t, i] = positions[b, t] * inv_freq[i] modulo 2 pi, within ~1e-5 rad of the
      float64 value for every int32 position.
    """
    positions_BT, inv_freq, unscaled_inv_freq = _checked(positions_BT, inv_freq, unscaled_inv_freq)
    return _angles(positions_BT, inv_freq, unscaled_inv_freq, jnp.int32(num_unscaled))


@functools.partial(jax.jit, static_argnames="interleaved")
def _rotate(x_BTNH: Array, angles_BTR: Array, attention_factor: Array, interleaved: bool) -> Array:
    rotary_dim = 2 * angles_BTR.shape[-1]
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


def apply_rope(
    x_BTNH: Array,
    positions_BT: ArrayLike,
    inv_freq: ArrayLike,
    attention_factor: float = 1.0,
    *,
    interleaved: bool = False,
    unscaled_inv_freq: ArrayLike | None = None,
    num_unscaled: int = 0,
) -> Array:
    """Rotates the first `2 * len(inv_freq)` channels of x by their positions.

    Args:
      x_BTNH: queries or keys `[batch, seq, heads, head_dim]`, any float dtype.
      positions_BT: integer position ids `[batch, seq]` (or `[seq]`).
      inv_freq: `[rotary_dim // 2]` inverse frequencies; channels past rotary_dim (partial
        rotary) pass through unchanged.
      attention_factor: multiplies cos and sin (YaRN / LongRoPE temperature).
      interleaved: pairs are (x_{2i}, x_{2i+1}) (GPT-J / original RoFormer) instead of
        the rotate-half layout (x_i, x_{i + rotary_dim/2}) used by Llama checkpoints.
      unscaled_inv_freq, num_unscaled: LongRoPE's unscaled first positions (`rope_angles`).

    Returns:
      Rotated array, same shape and dtype as x; the rotation itself runs in float32.
    """
    x_BTNH = jnp.asarray(x_BTNH)
    angles_BTR = rope_angles(
        positions_BT, inv_freq, unscaled_inv_freq=unscaled_inv_freq, num_unscaled=num_unscaled
    )
    if 2 * angles_BTR.shape[-1] > x_BTNH.shape[-1]:
        raise ValueError(f"rotary dim {2 * angles_BTR.shape[-1]} exceeds head_dim {x_BTNH.shape[-1]}")
    return _rotate(x_BTNH, angles_BTR, jnp.float32(attention_factor), interleaved)
