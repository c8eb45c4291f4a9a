"""ALiBi slopes (paper's rule), the causal bias and the per-tile form kernels use."""

import chex
import jax
import numpy as np
import pytest

from longctx_jax.positional.alibi import alibi_bias, alibi_slopes, alibi_tile_bias


def test_slopes_for_eight_heads():
    expected = np.array([2.0**-k for k in range(1, 9)], np.float32)
    chex.assert_trees_all_close(alibi_slopes(8), expected, rtol=1e-6)


def test_slopes_for_twelve_heads_follow_papers_rule():
    # Closest power of two below 12 is 8: its slopes 2^-1 .. 2^-8, then the odd-indexed slopes
    # of 16 heads (2^-0.5, 2^-1.5, ...), the first 12 - 8 = 4 of them.
    expected = [2.0**-k for k in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    chex.assert_trees_all_close(alibi_slopes(12), np.array(expected, np.float32), rtol=1e-6)


@pytest.mark.parametrize("num_heads", [1, 2, 4, 16, 32, 64])
def test_power_of_two_slopes_are_geometric(num_heads):
    expected = np.array([2.0 ** (-8.0 * n / num_heads) for n in range(1, num_heads + 1)])
    chex.assert_trees_all_close(alibi_slopes(num_heads).astype(np.float64), expected, rtol=1e-6)


@pytest.mark.parametrize("num_heads", [3, 5, 6, 7, 12, 20, 40, 96])
def test_any_head_count_gives_distinct_slopes_in_range(num_heads):
    slopes = alibi_slopes(num_heads)
    chex.assert_shape(slopes, (num_heads,))
    assert slopes.dtype == np.float32
    assert np.all((slopes > 0) & (slopes < 1)) and len(np.unique(slopes)) == num_heads


@pytest.mark.parametrize("num_heads", [0, -3])
def test_bad_head_count_raises(num_heads):
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(num_heads)


@pytest.mark.parametrize("jit", [False, True])
def test_bias_matches_reference_with_positions(jit):
    slopes = alibi_slopes(4)
    q_pos = np.array([[5, 6, 7], [0, 1, 2]], np.int32)  # e.g. a KV-cache offset
    k_pos = np.array([[0, 2, 4, 6, 7], [0, 1, 2, 3, 4]], np.int32)
    fn = jax.jit(alibi_bias) if jit else alibi_bias
    bias = fn(slopes, q_pos, k_pos)
    chex.assert_shape(bias, (2, 4, 3, 5))
    ref = np.zeros((2, 4, 3, 5))
    for b in range(2):
        for n in range(4):
            for i in range(3):
                for j in range(5):
                    ref[b, n, i, j] = -float(slopes[n]) * abs(int(q_pos[b, i]) - int(k_pos[b, j]))
    chex.assert_trees_all_close(np.asarray(bias, np.float64), ref, rtol=1e-6, atol=1e-6)


def test_causal_bias_equals_bloom_form_under_softmax():
    # BLOOM adds slope * j (key position); the paper's -slope * (i - j) differs by a per-row
    # constant, so causal softmax probabilities agree.
    T, slopes = 6, alibi_slopes(8)
    pos = np.arange(T)
    ours = np.asarray(alibi_bias(slopes, pos, pos))[0]
    bloom = slopes[:, None, None] * pos[None, None, :].astype(np.float32)
    causal = pos[:, None] >= pos[None, :]

    def probs(logits):
        logits = np.where(causal, logits, -np.inf)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    chex.assert_trees_all_close(probs(ours), probs(bloom), rtol=1e-6, atol=1e-7)
    diag = np.diagonal(ours, axis1=-2, axis2=-1)
    np.testing.assert_array_equal(diag, 0.0)


def test_tile_bias_equals_slices_of_full_bias():
    slopes = alibi_slopes(6)
    pos = np.arange(16, dtype=np.int32)
    full = np.asarray(alibi_bias(slopes, pos, pos))[0]
    for q0, k0 in ((0, 0), (4, 8), (12, 4)):
        tile = alibi_tile_bias(slopes[:, None, None], pos[q0:q0 + 4, None], pos[None, k0:k0 + 8])
        chex.assert_trees_all_close(tile, full[:, q0:q0 + 4, k0:k0 + 8], rtol=0, atol=0)
    assert alibi_tile_bias(slopes[:1, None, None], pos[:1, None], pos[None, :1]).dtype == np.float32
