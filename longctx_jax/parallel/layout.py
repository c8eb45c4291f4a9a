"""Sequence layouts for load-balanced causal context parallelism.

With a causal mask and the sequence cut into P contiguous shards, shard r holds queries
that see r + 1 shards of keys, so the last device does ~2P / (P + 1) times the average
work and the ring waits for it. Two fixes permute tokens once, in the data pipeline:

  zig-zag (Llama 3 context parallelism; "ring-flash-attention"): cut the sequence into 2P
      chunks and give shard r chunks r and 2P - 1 - r, so every shard gets one early
      and one late chunk:  shard r = [c_r, c_(2P-1-r)].
  striped (Brandon et al. 2023, "Striped Attention"): shard r holds positions
      r, r + P, r + 2P, ...

The permutation is applied to tokens, positions and labels alike (`apply_permutation`);
attention masks are computed from the permuted *true* positions, so the model code does
not change. `shard_work` counts the allowed (query, key) pairs and the non-empty
(query shard, key shard) blocks of each device, the numbers the layout balances.
"""

import numpy as np

from longctx_jax.typing import ArrayLike

LAYOUTS = ("natural", "zigzag", "striped")


def _check(seq_len: int, num_shards: int, multiple: int) -> None:
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if seq_len % (multiple * num_shards):
        raise ValueError(
            f"sequence length {seq_len} must be divisible by {multiple} x num_shards "
            f"= {multiple * num_shards}"
        )


def zigzag_permutation(seq_len: int, num_shards: int) -> np.ndarray:
    """Indices `perm` such that `x[perm]` is the zig-zag layout of a natural-order `x`.

    Shard r (the r-th contiguous slice of length seq_len / num_shards of the result)
    holds chunks r and 2 * num_shards - 1 - r of length seq_len / (2 * num_shards).
    """
    _check(seq_len, num_shards, 2)
    chunks = np.arange(seq_len, dtype=np.int32).reshape(2 * num_shards, -1)
    order = [c for r in range(num_shards) for c in (r, 2 * num_shards - 1 - r)]
    return chunks[order].reshape(-1)


def striped_permutation(seq_len: int, num_shards: int) -> np.ndarray:
    """Indices `perm` such that shard r of `x[perm]` holds positions r, r + P, r + 2P, ..."""
    _check(seq_len, num_shards, 1)
    return np.arange(seq_len, dtype=np.int32).reshape(-1, num_shards).T.reshape(-1)


def layout_permutation(layout: str, seq_len: int, num_shards: int) -> np.ndarray:
    """The permutation of a named layout (`"natural"`, `"zigzag"` or `"striped"`)."""
    if layout == "natural":
        _check(seq_len, num_shards, 1)
        return np.arange(seq_len, dtype=np.int32)
    if layout == "zigzag":
        return zigzag_permutation(seq_len, num_shards)
    if layout == "striped":
        return striped_permutation(seq_len, num_shards)
    raise ValueError(f"unknown layout {layout!r}; valid: {LAYOUTS}")


def invert_permutation(perm: ArrayLike) -> np.ndarray:
    """`inv` with `x[perm][inv] == x`."""
    perm = np.asarray(perm)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inv


def apply_permutation(x, perm: ArrayLike, axis: int = 1):
    """Reorders `x` along the sequence `axis` (default 1, as in `[B, T, ...]`): `x[:, perm]`."""
    return x.take(np.asarray(perm), axis=axis)


def undo_permutation(x, perm: ArrayLike, axis: int = 1):
    """Inverse of `apply_permutation`: back to natural order."""
    return x.take(invert_permutation(perm), axis=axis)


def _count_in(sorted_keys: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Number of keys in [lo, hi] for each (lo, hi), empty when hi < lo."""
    n = np.searchsorted(sorted_keys, hi, side="right") - np.searchsorted(sorted_keys, lo, side="left")
    return np.maximum(n, 0)


def _allowed_counts(q: np.ndarray, sorted_k: np.ndarray, causal: bool, window: int | None,
                    sinks: int) -> np.ndarray:
    """Per query: number of keys in `sorted_k` the `AttentionMask` lets it see."""
    big = np.iinfo(np.int64).max // 4
    q = q.astype(np.int64)
    lo = q - window + 1 if window is not None else np.full_like(q, -big)
    hi = q if causal else (q + window - 1 if window is not None else np.full_like(q, big))
    count = _count_in(sorted_k, lo, hi)
    if window is not None and sinks:
        count += _count_in(sorted_k, np.zeros_like(q), np.minimum(np.minimum(hi, lo - 1), sinks - 1))
    return count


def shard_work(
    q_positions_T: ArrayLike,
    k_positions_S: ArrayLike,
    num_shards: int,
    *,
    causal: bool = True,
    window: int | None = None,
    sinks: int = 0,
) -> dict[str, list[int]]:
    """Attention work of each device when positions are split into contiguous shards.

    Args:
      q_positions_T, k_positions_S: true positions in the (possibly permuted) order the
        arrays are laid out, one sequence (`[T]`, `[S]`).
      num_shards: devices along the sequence axis.
      causal, window, sinks: the `AttentionMask`.

    Returns:
      `{"pairs": [...], "blocks": [...]}`: per device, allowed (query, key) pairs and
      non-empty (own query shard, key shard) blocks out of `num_shards`.
    """
    q = np.asarray(q_positions_T).reshape(num_shards, -1)
    k = np.asarray(k_positions_S).reshape(num_shards, -1)
    k_sorted = [np.sort(k_r) for k_r in k]
    pairs, blocks = [], []
    for q_r in q:
        per_block = [int(_allowed_counts(q_r, ks, causal, window, sinks).sum()) for ks in k_sorted]
        pairs.append(sum(per_block))
        blocks.append(sum(n > 0 for n in per_block))
    return {"pairs": pairs, "blocks": blocks}


def imbalance(work: list[int]) -> float:
    """max / min of per-device work (inf when a device has none)."""
    lo = min(work)
    return float("inf") if lo == 0 else max(work) / lo
