"""Verdict rules of the reproductions (eval/verdicts.py) against hand-computed references."""

import math

import numpy as np
import pytest

from longctx_jax.eval import intervals, verdicts


def _series(values_by_seed):
    """{seed: {doc: blocks}} from nested lists."""
    return {str(s): {f"doc{d}": list(map(float, b)) for d, b in enumerate(docs)}
            for s, docs in enumerate(values_by_seed)}


def _rule(expect="lower", margin=0.0, method="a/full@4L", control="b/full@4L"):
    return {"name": "r", "method": method, "control": control, "expect": expect, "margin": margin}


@pytest.mark.parametrize("expect, margin, lo, hi, seeds, verdict", [
    ("lower", 0.0, -0.3, -0.1, [-0.2, -0.25, -0.1], "yes"),
    ("lower", 0.0, -0.3, -0.1, [-0.2, 0.05, -0.3], "not distinguishable"),  # one seed disagrees
    ("lower", 0.0, -0.3, 0.1, [-0.2, -0.2, -0.2], "not distinguishable"),
    ("lower", 0.0, 0.1, 0.3, [0.2, 0.2, 0.2], "no"),
    ("higher", 0.0, 0.1, 0.3, [0.2, 0.1, 0.3], "yes"),
    ("higher", 0.0, -0.3, -0.1, [-0.2, -0.2, -0.2], "no"),
    ("higher", 0.0, -0.1, 0.3, [0.2, 0.2, 0.2], "not distinguishable"),
    ("not_higher", 0.01, -0.02, 0.005, [0.0, 0.004, -0.01], "yes"),
    ("not_higher", 0.01, -0.02, 0.02, [0.0, 0.0, 0.0], "not distinguishable"),
    ("not_higher", 0.01, 0.011, 0.05, [0.03, 0.03, 0.03], "no"),
    ("not_higher", 0.01, -0.02, 0.005, [0.0, 0.02, 0.0], "not distinguishable"),
])
def test_decide_follows_the_stated_rule(expect, margin, lo, hi, seeds, verdict):
    assert verdicts.decide(expect, margin, lo, hi, seeds) == verdict


def test_paired_direction_reads_an_interval():
    assert intervals.paired_direction(-0.2, -0.1) == "lower"
    assert intervals.paired_direction(0.1, 0.2) == "higher"
    assert intervals.paired_direction(-0.1, 0.1) == "not distinguishable"
    assert intervals.paired_direction(0.005, 0.009, margin=0.01) == "lower"
    with pytest.raises(ValueError, match="lo <= hi"):
        intervals.paired_direction(0.2, 0.1)


def test_paired_difference_is_the_mean_over_seed_document_strata():
    rng = np.random.default_rng(0)
    control = rng.normal(3.0, 0.3, (3, 4, 8))  # seeds x documents x blocks
    method = control + rng.normal(-0.1, 0.05, control.shape)
    diff = verdicts.paired_difference(_series(method), _series(control))
    np.testing.assert_allclose(diff["delta_nll"], (method - control).mean(), atol=1e-12)
    for s in range(3):
        np.testing.assert_allclose(diff["seed_delta"][str(s)], (method[s] - control[s]).mean(), atol=1e-12)
    assert diff["delta_lo"] < diff["delta_nll"] < diff["delta_hi"] < 0


def test_summarize_series_matches_numpy():
    values = np.random.default_rng(1).normal(2.0, 0.2, (3, 5, 4))
    s = verdicts.summarize_series(_series(values))
    np.testing.assert_allclose(s["nll"], values.mean(), atol=1e-12)
    np.testing.assert_allclose(s["ppl"], math.exp(values.mean()), rtol=1e-12)
    assert s["ppl_lo"] < s["ppl"] < s["ppl_hi"] and s["seeds"] == 3 and s["documents"] == 5
    np.testing.assert_allclose(list(s["seed_nll"].values()), values.mean(axis=(1, 2)), atol=1e-12)


def _noisy(shift, seed=0, shape=(3, 6, 16)):
    rng = np.random.default_rng(seed)
    control = rng.normal(3.0, 0.2, shape)
    return _series(control + shift + rng.normal(0, 0.02, shape)), _series(control)


@pytest.mark.parametrize("shift, expect, verdict", [
    (-0.2, "lower", "yes"), (0.2, "lower", "no"), (0.0, "lower", "not distinguishable"),
    (0.2, "higher", "yes"), (-0.2, "higher", "no"),
])
def test_evaluate_rule_on_synthetic_series(shift, expect, verdict):
    method, control = _noisy(shift)
    out = verdicts.evaluate_rule(_rule(expect), {"a/full@4L": method, "b/full@4L": control})
    assert out["verdict"] == verdict
    np.testing.assert_allclose(out["delta_nll"], shift, atol=0.01)


def test_pooled_interval_is_not_enough_when_a_seed_disagrees():
    method, control = _noisy(-0.2)
    method["2"] = {d: list(np.asarray(b) + 0.25) for d, b in method["2"].items()}  # seed 2: +0.05
    out = verdicts.evaluate_rule(_rule(), {"a/full@4L": method, "b/full@4L": control})
    assert out["delta_hi"] < 0 and out["seed_delta"]["2"] > 0
    assert out["verdict"] == "not distinguishable"


def test_claims_combine_their_comparisons():
    assert verdicts.combine(["yes", "yes"]) == "yes"
    assert verdicts.combine(["yes", "no", "not distinguishable"]) == "no"
    assert verdicts.combine(["yes", "not distinguishable"]) == "not distinguishable"
    better, _ = _noisy(-0.2)
    worse, control = _noisy(0.2)
    claim = {"name": "c", "source": "s", "claim": "text",
             "rules": [_rule(method="a/full@4L"), _rule(method="w/full@4L")]}
    out = verdicts.evaluate_claims([claim], {"a/full@4L": better, "w/full@4L": worse, "b/full@4L": control})
    assert [c["verdict"] for c in out[0]["comparisons"]] == ["yes", "no"] and out[0]["verdict"] == "no"


@pytest.mark.parametrize("change, match", [
    ({"expect": "smaller"}, "expect 'smaller'"),
    ({"expect": "not_higher", "margin": 0.0}, "positive margin"),
    ({"margin": 0.1}, "for 'not_higher' rules only"),
    ({"method": "a/full@4"}, "run/protocol@kL"),
    ({"control": "b/strided@4L"}, "run/protocol@kL"),
    ({"extra": 1}, "rule fields"),
])
def test_bad_rules_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        verdicts.check_rule({**_rule(), **change})


def test_mismatched_series_are_refused():
    method, control = _noisy(-0.1)
    del method["2"]
    with pytest.raises(ValueError, match="different"):
        verdicts.paired_difference(method, control)
    method, control = _noisy(-0.1)
    method["0"]["doc0"] = method["0"]["doc0"][:-1]
    with pytest.raises(ValueError, match="not the same targets"):
        verdicts.paired_difference(method, control)
    with pytest.raises(ValueError, match="needs series"):
        verdicts.evaluate_rule(_rule(), {"a/full@4L": method})
