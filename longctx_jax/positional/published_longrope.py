"""Published LongRoPE factors of a released model, and their transfer to another model.

LongRoPE (Ding et al. 2024, arXiv:2402.13753, eq. 3) divides RoPE band i by its own factor
lambda_i and multiplies cos and sin by an attention factor (Phi-3's form of the paper's
temperature):

    inv_freq_i = base^(-2i / d) / lambda_i,   lambda = long_factor when T > L, else short_factor
    attention factor = sqrt(1 + ln s / ln L),  s = max_position_embeddings / L

Phi-3.5-mini-instruct ships the lambdas its search and fine-tuning produced (48 per list, d = 96,
L = 4096, s = 32) in its config.json, which this package carries under `positional/data/`
(source URL, licence and provenance in `data/README.md`; no network at run time).
`load_published` reads that file through the one HF reader (`rope_config.rope_config_from_hf`).

Another model has another rotary dim d' (SmolLM2-135M: d' = 64, 32 bands) and is extended by
another factor s' (SmolLM2 8K -> 16K: s' = 2). `transfer_factors` maps a published list onto
it; the mapping, for n published bands and m target bands:

    x_i = i / n      (i = 0 .. n-1)   normalised frequency index: band i turns at base^(-x_i)
    y_j = j / m      (j = 0 .. m-1)
    mu_j = interp(y_j; x, lambda)      piecewise linear in x, constant beyond the last point
    lambda'_j = mu_j ^ (ln s' / ln s)

The first line aligns bands by their place in the frequency spectrum (the fastest band to the
fastest, the slowest to the slowest, whatever d and d'); the exponent keeps each band at the
same fraction, in log space, of the way from no interpolation (lambda = 1) to the full factor
(lambda = s): lambda = 1 stays 1, lambda = s becomes s', and s' = s leaves the values as
published. Both lists (long and short) go through the same map. What it does not transfer:
the two models have different bases and pretrained lengths, so a band at the same normalised
index has a different wavelength relative to L; the published values were also fitted to a
model that was then fine-tuned with them. The extension method `longrope_phi3`
(`eval/methods.py`) uses `published_rope_scaling`, with the attention factor above computed
from the target model's own s' and L.
"""

import dataclasses
import json
import math
from importlib import resources
from typing import Any

import numpy as np

from longctx_jax.positional.rope_config import rope_config_from_hf
from longctx_jax.positional.rope_scaling import longrope_attention_factor
from longctx_jax.positional.rope_types import rotary_dim_of

__all__ = ["PUBLISHED", "PublishedLongRope", "load_published", "published_rope_scaling", "transfer_factors"]


@dataclasses.dataclass(frozen=True)
class _Entry:
    file: str
    url: str
    licence: str


# name -> the shipped config.json (positional/data/) and where it comes from.
PUBLISHED: dict[str, _Entry] = {
    "phi3.5-mini": _Entry(
        "phi3_5_mini_instruct_config.json",
        "https://huggingface.co/microsoft/Phi-3.5-mini-instruct/blob/main/config.json",
        "MIT",
    ),
}


@dataclasses.dataclass(frozen=True)
class PublishedLongRope:
    """The LongRoPE settings of one released model.

    Attributes:
      name: key of `PUBLISHED`.
      url: the config.json it was read from (as published).
      licence: that file's licence.
      long_factor: float64 `[rotary_dim // 2]`, lambda for T > L.
      short_factor: float64 `[rotary_dim // 2]`, lambda for T <= L.
      original_length: L, the pretrained context (`original_max_position_embeddings`).
      factor: s = max_position_embeddings / L.
      rotary_dim: d.
      base: the RoPE base theta.
    """

    name: str
    url: str
    licence: str
    long_factor: np.ndarray
    short_factor: np.ndarray
    original_length: int
    factor: float
    rotary_dim: int
    base: float

    def attention_factor(self) -> float:
        """sqrt(1 + ln s / ln L), the model's own factor on cos and sin."""
        return longrope_attention_factor(self.factor, self.original_length)


def load_published(name: str = "phi3.5-mini") -> PublishedLongRope:
    """Reads a shipped config.json and returns its LongRoPE settings.

    Args:
      name: one of `PUBLISHED` ("phi3.5-mini": microsoft/Phi-3.5-mini-instruct).

    Raises:
      ValueError: an unknown name, or a file whose rope scaling is not `longrope`.
    """
    if name not in PUBLISHED:
        raise ValueError(f"unknown published LongRoPE model {name!r}; valid: {tuple(PUBLISHED)}")
    entry = PUBLISHED[name]
    text = resources.files("longctx_jax.positional").joinpath("data", entry.file).read_text(encoding="utf-8")
    hf = json.loads(text)
    rope = rope_config_from_hf(hf)
    scaling = rope.rope_scaling or {}
    if scaling.get("rope_type") != "longrope":
        raise ValueError(f"{entry.file}: rope scaling {scaling.get('rope_type')!r} is not 'longrope'")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    return PublishedLongRope(
        name=name,
        url=entry.url,
        licence=entry.licence,
        long_factor=np.asarray(scaling["long_factor"], np.float64),
        short_factor=np.asarray(scaling["short_factor"], np.float64),
        original_length=int(scaling["original_max_position_embeddings"]),
        factor=float(scaling["factor"]),
        rotary_dim=rotary_dim_of(int(head_dim), scaling),
        base=float(rope.theta),
    )


def transfer_factors(
    factors: Any, num_bands: int, *, source_factor: float, target_factor: float
) -> np.ndarray:
    """Maps per-band factors onto `num_bands` bands and another extension factor (module doc).

    Args:
      factors: published lambda `[n]` (n >= 2, every entry >= 1 is not required but > 0 is).
      num_bands: m, the target model's rotary_dim // 2 (> 0).
      source_factor: s of the published model (> 1).
      target_factor: s' of the target extension (>= 1).

    Returns:
      float64 `[m]`: lambda'_j = interp(j / m; i / n, lambda) ^ (ln s' / ln s).

    Raises:
      ValueError: fewer than two factors, a non-positive or non-finite factor, num_bands < 1,
        source_factor <= 1 or target_factor < 1.
    """
    lam = np.asarray(factors, np.float64).reshape(-1)
    if lam.size < 2 or not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ValueError(f"factors must be >= 2 positive finite numbers, got {factors!r}")
    if isinstance(num_bands, bool) or not isinstance(num_bands, int) or num_bands < 1:
        raise ValueError(f"num_bands must be a positive integer, got {num_bands!r}")
    if not math.isfinite(source_factor) or source_factor <= 1.0:
        raise ValueError(f"source_factor must be a finite number > 1, got {source_factor}")
    if not math.isfinite(target_factor) or target_factor < 1.0:
        raise ValueError(f"target_factor must be a finite number >= 1, got {target_factor}")
    x = np.arange(lam.size) / lam.size
    y = np.arange(num_bands) / num_bands
    mu = np.interp(y, x, lam)
    return mu ** (math.log(target_factor) / math.log(source_factor))


def published_rope_scaling(
    name: str, *, rotary_dim: int, factor: float, original_length: int
) -> dict[str, Any]:
    """An HF `longrope` rope_scaling dict carrying a published model's factors to another model.

    Args:
      name: one of `PUBLISHED`.
      rotary_dim: d' of the target model (even, > 0).
      factor: s' = target length / original_length (>= 1).
      original_length: the target model's pretrained context L'.

    Returns:
      {"rope_type": "longrope", "factor": s', "original_max_position_embeddings": L',
       "long_factor": [d'/2], "short_factor": [d'/2]}; the attention factor is then
      sqrt(1 + ln s' / ln L') (`rope_scaling.longrope_attention_factor`).
    """
    if isinstance(original_length, bool) or not isinstance(original_length, int) or original_length <= 0:
        raise ValueError(f"original_length must be a positive integer, got {original_length!r}")
    bands = rotary_dim_of(rotary_dim) // 2
    published = load_published(name)
    kwargs = dict(source_factor=published.factor, target_factor=float(factor))
    return {
        "rope_type": "longrope",
        "factor": float(factor),
        "original_max_position_embeddings": original_length,
        "long_factor": transfer_factors(published.long_factor, bands, **kwargs).tolist(),
        "short_factor": transfer_factors(published.short_factor, bands, **kwargs).tolist(),
    }
