"""Bootstrap confidence intervals for perplexity: blocks of positions, stratified by document.

Token NLLs of one document are strongly correlated over nearby positions, so resampling single
tokens understates the variance. We cut each document's per-target NLL into contiguous blocks of
`BLOCK` targets (the moving-block idea of Kuensch 1989 with non-overlapping blocks), keep each
block's mean NLL, and resample blocks with replacement *within each document* (a stratified
bootstrap: every replicate keeps every document, so a hard document cannot drop out of a mean):

    replicate r:  m_r = (1 / D) * sum_d mean_{j in sample_r(d)} b_{d, j}
    interval:     the (1 - c) / 2 and (1 + c) / 2 quantiles of {m_r}, r = 1..R  (percentile method)

with b_{d, j} the mean NLL of block j of document d and c the confidence (0.95). Perplexity is
exp(NLL), and exp is monotone, so the perplexity interval is exp of the NLL interval.

Comparing two methods on the same positions, the blocks are paired: the same resampled block
indices are applied to both, i.e. the bootstrap runs on the per-block differences
b^A_{d, j} - b^B_{d, j}. An interval for the difference that excludes 0 says the gap is larger than
the variation of these documents' positions; it says nothing about other documents, which is why
reports also show every document separately. `paired_direction` reads such an interval.
"""

from collections.abc import Sequence

import numpy as np

BLOCK = 256
RESAMPLES = 2000
CONFIDENCE = 0.95


def block_means(nll_T: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Mean NLL of each contiguous block of `block` targets; a shorter last block is dropped
    unless it is the only one.

    Args:
      nll_T: per-target NLL `[T]` of one document.
      block: block length in targets.

    Returns:
      float64 `[max(1, T // block)]`.
    """
    nll_T = np.asarray(nll_T, np.float64).reshape(-1)
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    if nll_T.size == 0:
        raise ValueError("no targets to cut into blocks")
    n = nll_T.size // block
    if n == 0:
        return np.array([nll_T.mean()])
    return nll_T[: n * block].reshape(n, block).mean(axis=1)


def resample_indices(num_blocks: Sequence[int], resamples: int = RESAMPLES,
                     seed: int = 0) -> list[np.ndarray]:
    """Bootstrap block indices `[resamples, n_d]` for each document d (n_d blocks)."""
    if resamples <= 0:
        raise ValueError(f"resamples must be positive, got {resamples}")
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=(resamples, n)) for n in num_blocks]


def percentile_interval(replicates_R: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` interval of the replicates (numpy's linear quantiles)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, hi = np.quantile(np.asarray(replicates_R, np.float64), [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def stratified_interval(
    blocks: Sequence[np.ndarray],
    *,
    indices: Sequence[np.ndarray] | None = None,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, float]:
    """Mean over documents of their mean block value, with a stratified bootstrap interval.

    Args:
      blocks: one array of block values per document (block NLLs, or paired differences).
      indices: resampled block indices per document `[R, n_d]` (default: `resample_indices`).
      resamples, confidence, seed: bootstrap settings when `indices` is None.

    Returns:
      {"mean", "lo", "hi", "resamples"}.
    """
    blocks = [np.asarray(b, np.float64).reshape(-1) for b in blocks]
    if not blocks or any(b.size == 0 for b in blocks):
        raise ValueError("need at least one document with at least one block")
    if indices is None:
        indices = resample_indices([b.size for b in blocks], resamples, seed)
    if len(indices) != len(blocks):
        raise ValueError(f"{len(indices)} index sets for {len(blocks)} documents")
    replicates = np.mean([b[idx].mean(axis=1) for b, idx in zip(blocks, indices, strict=True)], axis=0)
    lo, hi = percentile_interval(replicates, confidence)
    mean = float(np.mean([b.mean() for b in blocks]))
    return {"mean": mean, "lo": lo, "hi": hi, "resamples": int(replicates.shape[0])}


def paired_direction(lo: float, hi: float, margin: float = 0.0) -> str:
    """Where a paired difference's interval [lo, hi] lies relative to `margin`.

    Returns:
      "lower" if hi < margin, "higher" if lo > margin, else "not distinguishable".
    """
    if not lo <= hi:
        raise ValueError(f"need lo <= hi, got [{lo}, {hi}]")
    if hi < margin:
        return "lower"
    if lo > margin:
        return "higher"
    return "not distinguishable"
