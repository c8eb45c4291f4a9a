"""Host-side (numpy) block-sparsity metadata for the flash kernels.

The `[T, S]` attention pattern of an `AttentionMask` over default positions 0..T-1 and
0..S-1 is cut into `[block_q, block_k]` tiles, each classified as
    EMPTY   no allowed (query, key) pair: never loaded, never computed,
    PARTIAL some pairs allowed: computed with the mask applied,
    FULL    every pair allowed: computed without evaluating the mask.
Only real rows (< T) and real keys (< S) count; a tile holding padded keys is never FULL.

The classification is exact and costs O(1) per tile. For one key k the allowed query
rows form an interval [lo(k), hi(k)]:
    sink key (k < sinks, window set):  [k if causal else 0, inf)
    other key, no window:              [k if causal else 0, inf)
    other key, window w:               [k if causal else k - w + 1, k + w - 1]
Both ends are non-decreasing in k and step by at most one, so over a run of keys
[a, b] of one kind the rows that see some key are [lo(a), hi(b)] and the rows that see
every key are [lo(b), hi(a)]. A tile's real keys split into at most two such runs.

The kernels iterate, for each query block, only over the listed key blocks (and, for the
dK/dV kernel, for each key block over the listed query blocks), so a sliding window of w
keys over n tokens costs O(n * w) time and the lists hold O(n * w / b^2) entries.
"""

import dataclasses
import functools

import numpy as np

from longctx_jax.attention.masks import AttentionMask

EMPTY, PARTIAL, FULL = 0, 1, 2
_INF = np.iinfo(np.int64).max // 4


@dataclasses.dataclass(frozen=True)
class BlockLists:
    """Per-block visiting lists (int32 numpy arrays).

    `kv_index[i, :kv_count[i]]` are the key blocks query block i visits, ascending, with
    `kv_full[i, t]` = 1 when that tile needs no mask; `q_index`, `q_full`, `q_count` are
    the same lists transposed (query blocks per key block), for the dK/dV kernel.
    """

    kv_index: np.ndarray
    kv_full: np.ndarray
    kv_count: np.ndarray
    q_index: np.ndarray
    q_full: np.ndarray
    q_count: np.ndarray


def _row_interval(mask: AttentionMask, k: np.ndarray, sink: bool) -> tuple[np.ndarray, np.ndarray]:
    lo = k if mask.causal else np.zeros_like(k)
    hi = np.full_like(k, _INF)
    if mask.window is not None and not sink:
        if not mask.causal:
            lo = k - mask.window + 1
        hi = k + mask.window - 1
    return lo, hi


def block_states(mask: AttentionMask, q_len: int, kv_len: int, block_q: int, block_k: int) -> np.ndarray:
    """`[ceil(T / block_q), ceil(S / block_k)]` int8 table of EMPTY / PARTIAL / FULL."""
    if min(q_len, kv_len, block_q, block_k) < 1:
        raise ValueError(
            f"lengths and block sizes must be positive, got T={q_len}, S={kv_len}, "
            f"block_q={block_q}, block_k={block_k}"
        )
    nq, nk = -(-q_len // block_q), -(-kv_len // block_k)
    q0 = (np.arange(nq, dtype=np.int64) * block_q)[:, None]
    q1 = np.minimum(q0 + block_q, q_len) - 1
    k0 = np.arange(nk, dtype=np.int64) * block_k
    k1 = np.minimum(k0 + block_k, kv_len) - 1
    sinks = mask.sinks if mask.window is not None else 0
    runs = [  # (first key, last key, is sink run) per key block
        (k0, np.minimum(k1, sinks - 1), True),
        (np.maximum(k0, sinks), k1, False),
    ]
    any_ok = np.zeros((nq, nk), bool)
    all_ok = np.broadcast_to(k0 + block_k <= kv_len, (nq, nk)).copy()
    for a, b, sink in runs:
        present = (a <= b)[None, :]
        lo_a, hi_a = _row_interval(mask, a, sink)
        lo_b, hi_b = _row_interval(mask, b, sink)
        hits = np.maximum(lo_a[None, :], q0) <= np.minimum(hi_b[None, :], q1)
        any_ok |= present & hits
        all_ok &= ~present | ((lo_b[None, :] <= q0) & (hi_a[None, :] >= q1))
    return np.where(all_ok, FULL, np.where(any_ok, PARTIAL, EMPTY)).astype(np.int8)


def _lists(states: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    count = (states != EMPTY).sum(axis=1).astype(np.int32)
    width = max(int(count.max(initial=0)), 1)
    index = np.zeros((states.shape[0], width), np.int32)
    full = np.zeros((states.shape[0], width), np.int32)
    for row, row_states in enumerate(states):
        cols = np.flatnonzero(row_states != EMPTY)
        index[row, : cols.size] = cols
        full[row, : cols.size] = row_states[cols] == FULL
    return index, full, count


@functools.lru_cache(maxsize=64)
def block_lists(
    mask: AttentionMask,
    q_len: int,
    kv_len: int,
    block_q: int,
    block_k: int,
    skip: bool = True,
) -> BlockLists:
    """Visiting lists for `mask` over default positions; `skip=False` visits every tile, masked.

    `skip=False` is the rule for explicit (traced) positions: the pattern is not known on
    the host, so every tile is PARTIAL and the kernel evaluates the mask everywhere.
    """
    if skip:
        states = block_states(mask, q_len, kv_len, block_q, block_k)
    else:
        states = np.full((-(-q_len // block_q), -(-kv_len // block_k)), PARTIAL, np.int8)
    kv_index, kv_full, kv_count = _lists(states)
    q_index, q_full, q_count = _lists(states.T)
    return BlockLists(kv_index, kv_full, kv_count, q_index, q_full, q_count)
