"""Bootstrap intervals: a hand-computed case, blocks, stratification, pairing, summaries."""

import itertools

import chex
import numpy as np
import pytest

from longctx_jax.eval.intervals import block_means, percentile_interval, resample_indices, stratified_interval
from longctx_jax.eval.perplexity import summarize


def test_exhaustive_bootstrap_of_three_values_matches_the_hand_computation():
    # Every resample of (1, 2, 3) with replacement: 27 triples whose means are 1 (once), 4/3 (3x),
    # 5/3 (6x), 2 (7x), 7/3 (6x), 8/3 (3x), 3 (once). Linear quantiles at 0.025 and 0.975 of those
    # 27 sorted values sit at ranks 0.65 and 25.35: 1 + 0.65 * (4/3 - 1) and 8/3 + 0.35 * (3 - 8/3).
    idx = np.array(list(itertools.product(range(3), repeat=3)))
    got = stratified_interval([np.array([1.0, 2.0, 3.0])], indices=[idx])
    assert got["mean"] == pytest.approx(2.0)
    assert got["lo"] == pytest.approx(1 + 0.65 / 3, abs=1e-12)
    assert got["hi"] == pytest.approx(8 / 3 + 0.35 / 3, abs=1e-12)
    assert got["resamples"] == 27


def test_blocks_are_contiguous_means_and_a_short_tail_is_dropped():
    nll = np.arange(10, dtype=np.float64)
    chex.assert_trees_all_close(block_means(nll, 4), np.array([1.5, 5.5]))
    chex.assert_trees_all_close(block_means(nll[:3], 4), np.array([1.0]))  # one short block: kept
    with pytest.raises(ValueError, match="block"):
        block_means(nll, 0)


def test_stratified_replicates_keep_every_document():
    # Two documents of constant blocks: every replicate is the same mean of the two, so the
    # interval collapses; a pooled (unstratified) bootstrap would spread between 1 and 3.
    got = stratified_interval([np.full(8, 1.0), np.full(3, 3.0)], resamples=500)
    assert got["lo"] == got["hi"] == got["mean"] == pytest.approx(2.0)


def test_interval_covers_the_mean_and_narrows_with_more_blocks():
    rng = np.random.default_rng(0)
    small = stratified_interval([rng.normal(2.0, 0.5, 8)])
    large = stratified_interval([rng.normal(2.0, 0.5, 512)])
    for ci in (small, large):
        assert ci["lo"] < ci["mean"] < ci["hi"]
    assert large["hi"] - large["lo"] < (small["hi"] - small["lo"]) / 3


@pytest.mark.parametrize("bad", [dict(resamples=0), dict(confidence=1.0)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        if "resamples" in bad:
            resample_indices([3], bad["resamples"])
        else:
            percentile_interval(np.ones(3), bad["confidence"])


def _row(method, doc, blocks):
    blocks = [float(b) for b in blocks]
    return {"method": method, "length": 512, "doc": doc, "nll": float(np.mean(blocks)), "block_nll": blocks}


def test_summary_pairs_methods_on_the_same_blocks():
    rng = np.random.default_rng(1)
    base = {d: rng.normal(2.0, 0.3, 16) for d in ("a", "b")}
    rows = [_row("none", d, b) for d, b in base.items()]
    rows += [_row("yarn", d, b - 0.1) for d, b in base.items()]  # better by exactly 0.1 on every block
    by = {s["method"]: s for s in summarize(rows)}
    assert by["none"]["docs"] == ["a", "b"] and "delta_nll" not in by["none"]
    yarn = by["yarn"]
    # a constant paired difference has a zero-width interval, though each method's own interval is wide
    assert yarn["delta_nll"] == pytest.approx(-0.1) and yarn["delta_lo"] == pytest.approx(-0.1)
    assert yarn["delta_hi"] == pytest.approx(-0.1)
    assert yarn["nll_hi"] - yarn["nll_lo"] > 0.05
    assert yarn["ppl"] == pytest.approx(np.exp(yarn["nll"]))
    assert set(yarn["per_doc"]) == {"a", "b"}
