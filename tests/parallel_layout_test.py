"""Zig-zag / striped layouts and the per-device work they balance."""

import numpy as np
import pytest

from longctx_jax.attention.masks import AttentionMask
from longctx_jax.parallel import layout


def test_zigzag_gives_each_shard_an_early_and_a_late_chunk():
    perm = layout.zigzag_permutation(16, 4)
    np.testing.assert_array_equal(
        perm.reshape(4, 4),
        [[0, 1, 14, 15], [2, 3, 12, 13], [4, 5, 10, 11], [6, 7, 8, 9]],
    )


def test_striped_deals_positions_round_robin():
    perm = layout.striped_permutation(8, 4)
    np.testing.assert_array_equal(perm.reshape(4, 2), [[0, 4], [1, 5], [2, 6], [3, 7]])


@pytest.mark.parametrize("name", layout.LAYOUTS)
@pytest.mark.parametrize("seq_len, num_shards", [(16, 2), (64, 8), (48, 4)])
def test_permutations_round_trip(name, seq_len, num_shards):
    perm = layout.layout_permutation(name, seq_len, num_shards)
    np.testing.assert_array_equal(np.sort(perm), np.arange(seq_len))
    x = np.random.default_rng(0).normal(size=(2, seq_len, 3))
    np.testing.assert_array_equal(layout.apply_permutation(x, perm)[:, :, 0], x[:, perm, 0])
    np.testing.assert_array_equal(layout.undo_permutation(layout.apply_permutation(x, perm), perm), x)


def _brute_force_work(positions, num_shards, mask):
    """Per-shard allowed pairs and non-empty blocks from the full [T, S] mask."""
    allowed = np.asarray(mask.allowed(positions[:, None], positions[None, :]))
    L = positions.size // num_shards
    blocks = allowed.reshape(num_shards, L, num_shards, L).sum(axis=(1, 3))
    return {"pairs": blocks.sum(axis=1).tolist(), "blocks": (blocks > 0).sum(axis=1).tolist()}


@pytest.mark.parametrize("name", layout.LAYOUTS)
@pytest.mark.parametrize(
    "mask",
    [AttentionMask(), AttentionMask(causal=False), AttentionMask(window=5), AttentionMask(window=6, sinks=2),
     AttentionMask(causal=False, window=7), AttentionMask(causal=False, window=7, sinks=3)],
)
def test_shard_work_matches_brute_force(name, mask):
    perm = layout.layout_permutation(name, 32, 4)
    got = layout.shard_work(perm, perm, 4, causal=mask.causal, window=mask.window, sinks=mask.sinks)
    assert got == _brute_force_work(perm, 4, mask)


@pytest.mark.parametrize("num_shards", [2, 4, 8])
def test_zigzag_balances_causal_work(num_shards):
    seq_len = 1024
    natural = layout.shard_work(np.arange(seq_len), np.arange(seq_len), num_shards)
    perm = layout.zigzag_permutation(seq_len, num_shards)
    zigzag = layout.shard_work(perm, perm, num_shards)
    assert sum(natural["pairs"]) == sum(zigzag["pairs"]) == seq_len * (seq_len + 1) // 2
    assert layout.imbalance(zigzag["pairs"]) <= 1.1
    assert layout.imbalance(natural["pairs"]) > 2 * num_shards - 1.5


def test_bad_layouts_raise():
    with pytest.raises(ValueError, match="divisible by 2 x num_shards"):
        layout.zigzag_permutation(12, 4)
    with pytest.raises(ValueError, match="divisible by 1 x num_shards"):
        layout.striped_permutation(10, 4)
    with pytest.raises(ValueError, match="unknown layout"):
        layout.layout_permutation("spiral", 16, 2)
