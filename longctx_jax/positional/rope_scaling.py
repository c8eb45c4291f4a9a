"""The RoPE scaling family: inverse frequencies for every Hugging Face `rope_type`.

Plain RoPE (Su et al. 2021) rotates channel pair i (i = 0 .. d/2 - 1, d the rotary dim) by
    angle_i(p) = p * inv_freq_i,   inv_freq_i = base^(-2i / d),
so pair i has wavelength lambda_i = 2 pi / inv_freq_i tokens. Pair 0 turns fastest (high
frequency, wavelength 2 pi); pair d/2 - 1 slowest (low frequency, wavelength ~ 2 pi * base).
Every scaling below extends the context from the pretrained length L (HF
`original_max_position_embeddings`) by a factor s by changing some of these frequencies:

  type      changes                                  reference
  linear    all bands / s                            Chen et al. 2023 (Position Interpolation)
  ntk       base -> base * s^(d/(d-2)): low bands    bloc97 2023 (NTK-aware scaled RoPE)
  dynamic   ntk with s from the running length       emozilla 2023 (Dynamic NTK)
  yarn      low bands / s, high bands kept, ramp     Peng et al. 2023 (YaRN, NTK-by-parts)
  longrope  band i / lambda_i (searched per band)    Ding et al. 2024 (LongRoPE)
  llama3    low bands / s, high kept, smooth         Meta 2024 (Llama 3.1)

Each function takes the rotary dimension d and base and returns float64 inverse frequencies
`[d // 2]`; the RoPE-type table (`rope_types.py`) validates a config and picks one, and
`longctx_jax.positional.rope.rope_frequencies` casts the result to float32. The semantics are
those of transformers' `modeling_rope_utils`.
"""

import math
from collections.abc import Sequence

import numpy as np


def default_inv_freq(rotary_dim: int, base: float) -> np.ndarray:
    """Plain RoPE (Su et al. 2021, "RoFormer"), any base (1e4 Llama 2, 5e5 Llama 3, 1e6 Code Llama).

    inv_freq_i = base^(-2i / d),  i = 0 .. d/2 - 1.  Changes no band.
    """
    exponents = np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim
    return 1.0 / (float(base) ** exponents)


def linear_inv_freq(rotary_dim: int, base: float, *, factor: float) -> np.ndarray:
    """Position Interpolation (Chen et al. 2023, arXiv:2306.15595; kaiokendev's "SuperHOT").

    inv_freq_i = base^(-2i / d) / s.  Equivalent to feeding position p / s to plain RoPE,
    so positions up to s * L land inside the trained range. Changes every band equally,
    which also squeezes the high-frequency bands that resolve neighbouring tokens.
    """
    return default_inv_freq(rotary_dim, base) / factor


def ntk_inv_freq(rotary_dim: int, base: float, *, factor: float) -> np.ndarray:
    """Static NTK-aware scaling (bloc97, r/LocalLLaMA 2023; analysed in the YaRN paper, sec. 3.1).

    base' = base * s^(d / (d - 2));  inv_freq_i = base'^(-2i / d).
    The exponent makes the lowest band (i = d/2 - 1) exactly interpolated by s while band 0
    is untouched: high-frequency bands are extrapolated, low ones interpolated, smoothly.
    """
    return default_inv_freq(rotary_dim, base * factor ** (rotary_dim / (rotary_dim - 2)))


def dynamic_inv_freq(
    rotary_dim: int,
    base: float,
    *,
    factor: float,
    original_max_position_embeddings: int,
    seq_len: int | None,
) -> np.ndarray:
    """Dynamic NTK scaling (emozilla, r/LocalLLaMA 2023; HF `rope_type="dynamic"`).

    With T = max(seq_len, L):
        base' = base * (s * T / L - (s - 1))^(d / (d - 2));  inv_freq_i = base'^(-2i / d).
    Identical to plain RoPE while T <= L; beyond, the base grows with the running length,
    changing the low-frequency bands most (as `ntk`). seq_len None means T = L.
    """
    length = original_max_position_embeddings
    seq = seq_len if seq_len is not None and seq_len > length else length
    scale = factor * seq / length - (factor - 1.0)
    return default_inv_freq(rotary_dim, base * scale ** (rotary_dim / (rotary_dim - 2)))


def yarn_correction_dim(num_rotations: float, rotary_dim: int, base: float, length: int) -> float:
    """The (fractional) pair index whose wavelength fits `num_rotations` times into `length`.

    Solves length / lambda_i = num_rotations for i: i = d ln(L / (2 pi r)) / (2 ln base).
    """
    return rotary_dim * math.log(length / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_inv_freq(
    rotary_dim: int,
    base: float,
    *,
    factor: float,
    original_max_position_embeddings: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
) -> np.ndarray:
    """YaRN's NTK-by-parts interpolation (Peng et al. 2023, arXiv:2309.00071, eq. 18-20).

    With r_i = L / lambda_i the number of turns band i makes over the original length L:
      r_i > beta_fast (32): wavelength < L / beta_fast, band kept as is (extrapolated);
      r_i < beta_slow (1):  wavelength > L, band divided by s (interpolated, as PI);
      in between: a linear ramp in the band index,
        inv_freq_i = (1 - ramp_i) * b_i + ramp_i * b_i / s,
        ramp_i = clip((i - low) / (high - low), 0, 1),
      where low / high are the correction dims of beta_fast / beta_slow (floored / ceiled
      when `truncate`, HF's default; fractional otherwise, as gpt-oss).
    The attention factor (temperature) is separate: see `yarn_attention_factor`.
    """
    low = yarn_correction_dim(beta_fast, rotary_dim, base, original_max_position_embeddings)
    high = yarn_correction_dim(beta_slow, rotary_dim, base, original_max_position_embeddings)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp.
    ramp = np.clip((np.arange(rotary_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    inv_freq = default_inv_freq(rotary_dim, base)
    return inv_freq * (1.0 - ramp) + (inv_freq / factor) * ramp


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's temperature 0.1 * mscale * ln(s) + 1 (1 for s <= 1)."""
    return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_attention_factor(
    factor: float,
    *,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
) -> float:
    """YaRN's factor on cos and sin: sqrt(1/t) = 0.1 ln(s) + 1 (paper eq. 22).

    An explicit `attention_factor` wins. With both `mscale` and `mscale_all_dim` set
    (DeepSeek-V2/V3), the factor is mscale(s, mscale) / mscale(s, mscale_all_dim), where
    mscale(s, m) = 0.1 m ln(s) + 1; the model folds the mscale_all_dim part into its softmax
    scale itself.
    """
    if attention_factor is not None:
        return float(attention_factor)
    if mscale and mscale_all_dim:
        return yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
    return yarn_get_mscale(factor)


def longrope_inv_freq(
    rotary_dim: int,
    base: float,
    *,
    short_factor: Sequence[float],
    long_factor: Sequence[float],
    original_max_position_embeddings: int,
    seq_len: int | None,
) -> np.ndarray:
    """LongRoPE (Ding et al. 2024, arXiv:2402.13753; Phi-3 `rope_type="longrope"`).

    inv_freq_i = base^(-2i / d) / lambda_i, with lambda = long_factor when seq_len > L and
    short_factor otherwise (per-band rescale factors found by evolutionary search, eq. 3).
    Which bands change is whatever the search found; typically lambda_i ~ 1 for high bands
    and grows towards s for low ones. The paper's other knob, keeping the first n_hat
    positions unscaled, depends on the position and lives in `apply_rope`
    (`unscaled_inv_freq`, `num_unscaled`).
    """
    use_long = seq_len is not None and seq_len > original_max_position_embeddings
    ext = np.asarray(long_factor if use_long else short_factor, dtype=np.float64)
    return default_inv_freq(rotary_dim, base) / ext


def longrope_attention_factor(
    factor: float, original_max_position_embeddings: int, *, attention_factor: float | None = None
) -> float:
    """LongRoPE / Phi-3 factor on cos and sin: sqrt(1 + ln(s) / ln(L)) (1 for s <= 1)."""
    if attention_factor is not None:
        return float(attention_factor)
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1.0 + math.log(factor) / math.log(original_max_position_embeddings))


def llama3_inv_freq(
    rotary_dim: int,
    base: float,
    *,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
) -> np.ndarray:
    """Llama 3.1 frequency smoothing (Meta, "The Llama 3 Herd of Models", 2024; HF `llama3`).

    With wavelengths lambda_i and the original length L:
      lambda_i < L / high_freq_factor: band kept (high frequencies);
      lambda_i > L / low_freq_factor:  band divided by s (low frequencies);
      otherwise: inv_freq_i = (1 - a_i) b_i / s + a_i b_i,
                 a_i = (L / lambda_i - low_freq_factor) / (high_freq_factor - low_freq_factor).
    Llama 3.1: factor 8, low_freq_factor 1, high_freq_factor 4, L = 8192, base 5e5.
    """
    inv_freq = default_inv_freq(rotary_dim, base)
    wavelen = 2 * math.pi / inv_freq
    length = original_max_position_embeddings
    low_freq_wavelen = length / low_freq_factor
    high_freq_wavelen = length / high_freq_factor
    smooth = (length / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    out = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, out)
