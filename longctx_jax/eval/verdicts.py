"""Verdicts of the reproductions, computed by rules fixed in each claim's config before the run.

A claim (`configs/repro_*.py: CLAIMS`) is data: its text as the paper states it, its source, and
comparisons ("rules"), each between a method series and its control series on the same tokens:

    {"name": ..., "method": "pi_finetuned/full@4L", "control": "noscale_finetuned/full@4L",
     "expect": "lower" | "higher" | "not_higher", "margin": 0.0}

A series is "<run>/<protocol>@<k>L" and is stored as block NLLs (mean NLL of consecutive blocks
of targets, `intervals.block_means`) per seed and per held-out document:
`{seed: {document: [block NLL, ...]}}`. The paired difference method - control is taken block by
block (same seed, document and targets), and its 95 % interval is the stratified block bootstrap
of `intervals.stratified_interval` with one stratum per (seed, document). A "passkey" series
(`eval/passkey_claims.py`) holds per-example errors instead, 1 - exact match, one stratum per seed
(`{seed: {"examples": [...]}}`): the same code then gives differences of error rates. The rule:

    d = paired_direction(lo, hi, margin)    ("lower": hi < margin, "higher": lo > margin)
    expect "lower":      yes if d == "lower"  and every seed's mean difference < 0;  no if d == "higher"
    expect "higher":     yes if d == "higher" and every seed's mean difference > 0;  no if d == "lower"
    expect "not_higher": yes if d == "lower"  and every seed's mean difference < margin (margin > 0,
                         a non-inferiority margin in nats);                          no if d == "higher"
    otherwise "not distinguishable"

(margin is 0 for "lower" / "higher"). A claim's verdict is "yes" if every comparison is "yes",
"no" if any is "no", else "not distinguishable".
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np

from longctx_jax.eval.intervals import paired_direction, stratified_interval

EXPECTATIONS = ("lower", "higher", "not_higher")
VERDICTS = ("yes", "no", "not distinguishable")
PROTOCOLS = ("full", "chunked", "stream", "passkey")
RULE_FIELDS = ("name", "method", "control", "expect", "margin")
CLAIM_FIELDS = ("name", "source", "claim", "rules")

Series = Mapping[str, Mapping[str, Sequence[float]]]  # {seed: {document: block NLLs}}


def parse_series(key: str) -> tuple[str, str, int]:
    """"run/protocol@kL" -> (run, protocol, k).

    Raises:
      ValueError: `key` is not of that form or names an unknown protocol.
    """
    run, _, rest = key.partition("/")
    protocol, _, length = rest.partition("@")
    if not run or protocol not in PROTOCOLS or not length.endswith("L") or not length[:-1].isdigit() \
            or int(length[:-1]) <= 0:
        raise ValueError(f"series {key!r} is not 'run/protocol@kL' with protocol in {PROTOCOLS} and k >= 1")
    return run, protocol, int(length[:-1])


def check_rule(rule: Mapping) -> dict:
    """The rule as a plain dict, validated (fields, series names, expectation, margin)."""
    rule = dict(rule)
    if sorted(rule) != sorted(RULE_FIELDS):
        raise ValueError(f"rule fields must be {RULE_FIELDS}, got {sorted(rule)}")
    parse_series(rule["method"])
    parse_series(rule["control"])
    if rule["expect"] not in EXPECTATIONS:
        raise ValueError(f"rule {rule['name']!r}: expect {rule['expect']!r} not in {EXPECTATIONS}")
    margin = rule["margin"]
    if not isinstance(margin, int | float) or not math.isfinite(margin):
        raise ValueError(f"rule {rule['name']!r}: margin must be a finite number, got {margin!r}")
    if rule["expect"] == "not_higher" and margin <= 0:
        raise ValueError(f"rule {rule['name']!r}: a 'not_higher' rule needs a positive margin, got {margin}")
    if rule["expect"] != "not_higher" and margin != 0:
        raise ValueError(f"rule {rule['name']!r}: margin is for 'not_higher' rules only, got {margin}")
    return rule


def check_claim(claim: Mapping) -> dict:
    """The claim as a plain dict with validated rules."""
    claim = dict(claim)
    if sorted(claim) != sorted(CLAIM_FIELDS):
        raise ValueError(f"claim fields must be {CLAIM_FIELDS}, got {sorted(claim)}")
    if not claim["rules"]:
        raise ValueError(f"claim {claim['name']!r} has no rules")
    claim["rules"] = [check_rule(r) for r in claim["rules"]]
    return claim


def series_needed(claims: Sequence[Mapping]) -> list[str]:
    """Every series the rules of `claims` compare, in first-use order."""
    return list(dict.fromkeys(k for c in claims for r in check_claim(c)["rules"]
                              for k in (r["method"], r["control"])))


def _strata(series: Series) -> list[tuple[str, str]]:
    return [(s, d) for s in sorted(series, key=str) for d in sorted(series[s])]


def summarize_series(series: Series) -> dict:
    """Mean NLL over (seed, document) strata with its 95 % stratified block-bootstrap interval.

    Args:
      series: `{seed: {document: block NLLs [n_blocks]}}`.

    Returns:
      {"nll", "nll_lo", "nll_hi", "ppl", "ppl_lo", "ppl_hi", "seed_nll": {seed: mean over its
      documents}, "seeds", "documents"}.
    """
    strata = _strata(series)
    if not strata:
        raise ValueError("empty series")
    ci = stratified_interval([np.asarray(series[s][d]) for s, d in strata])
    seed_nll = {s: float(np.mean([np.mean(series[s][d]) for d in sorted(series[s])])) for s in sorted(series)}
    return {"nll": ci["mean"], "nll_lo": ci["lo"], "nll_hi": ci["hi"], "ppl": math.exp(ci["mean"]),
            "ppl_lo": math.exp(ci["lo"]), "ppl_hi": math.exp(ci["hi"]), "seed_nll": seed_nll,
            "seeds": len(series), "documents": len({d for _, d in strata})}


def paired_difference(method: Series, control: Series) -> dict:
    """Method - control, block by block on the same seeds, documents and targets.

    Returns:
      {"delta_nll", "delta_lo", "delta_hi", "seed_delta": {seed: mean difference}}.

    Raises:
      ValueError: the two series do not cover the same seeds, documents and blocks.
    """
    strata = _strata(method)
    if strata != _strata(control):
        raise ValueError(f"method and control cover different (seed, document) strata: {strata} vs "
                         f"{_strata(control)}")
    diffs = []
    for s, d in strata:
        a, b = np.asarray(method[s][d], np.float64), np.asarray(control[s][d], np.float64)
        if a.shape != b.shape:
            raise ValueError(f"seed {s} document {d}: {a.shape} blocks vs {b.shape}; not the same targets")
        diffs.append(a - b)
    ci = stratified_interval(diffs)
    seed_delta = {}
    for s in sorted(method):
        seed_delta[s] = float(np.mean([d.mean() for (t, _), d in zip(strata, diffs, strict=True) if t == s]))
    return {"delta_nll": ci["mean"], "delta_lo": ci["lo"], "delta_hi": ci["hi"], "seed_delta": seed_delta}


def decide(expect: str, margin: float, lo: float, hi: float, seed_deltas: Sequence[float]) -> str:
    """The verdict of one comparison from its paired interval and per-seed differences (module doc)."""
    if expect not in EXPECTATIONS:
        raise ValueError(f"expect {expect!r} not in {EXPECTATIONS}")
    if not seed_deltas:
        raise ValueError("no seeds")
    direction = paired_direction(lo, hi, margin)
    if expect == "higher":
        if direction == "higher" and all(d > margin for d in seed_deltas):
            return "yes"
        return "no" if direction == "lower" else "not distinguishable"
    if direction == "lower" and all(d < margin for d in seed_deltas):
        return "yes"
    return "no" if direction == "higher" else "not distinguishable"


def combine(verdicts: Sequence[str]) -> str:
    """A claim's verdict from its comparisons': all yes -> yes, any no -> no, else not distinguishable."""
    bad = [v for v in verdicts if v not in VERDICTS]
    if bad or not verdicts:
        raise ValueError(f"verdicts must be a non-empty list of {VERDICTS}, got {list(verdicts)}")
    if all(v == "yes" for v in verdicts):
        return "yes"
    return "no" if "no" in verdicts else "not distinguishable"


def evaluate_rule(rule: Mapping, series: Mapping[str, Series]) -> dict:
    """One comparison: the rule, the paired difference with its interval, and the verdict."""
    rule = check_rule(rule)
    for key in (rule["method"], rule["control"]):
        if key not in series:
            raise ValueError(f"rule {rule['name']!r} needs series {key!r}; have {sorted(series)}")
    diff = paired_difference(series[rule["method"]], series[rule["control"]])
    verdict = decide(rule["expect"], rule["margin"], diff["delta_lo"], diff["delta_hi"],
                     list(diff["seed_delta"].values()))
    return {"rule": rule, **diff, "verdict": verdict}


def evaluate_claims(claims: Sequence[Mapping], series: Mapping[str, Series]) -> list[dict]:
    """Every claim with its comparisons evaluated and its combined verdict."""
    out = []
    for claim in claims:
        claim = check_claim(claim)
        comparisons = [evaluate_rule(r, series) for r in claim["rules"]]
        out.append({**{k: claim[k] for k in ("name", "source", "claim")}, "comparisons": comparisons,
                    "verdict": combine([c["verdict"] for c in comparisons])})
    return out
