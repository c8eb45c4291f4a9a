"""The LongRoPE claim on held-out documents: the search winner against the paper's controls, and its rule.

Claim (Ding et al. 2024, "LongRoPE", arXiv:2402.13753): without fine-tuning, the per-band
rescale factors (and n_hat) found by the evolutionary search give a lower perplexity at the
extended length than Position Interpolation, NTK and YaRN at the same factor s. The controls,
all at s and on the same documents: PI ("linear"), NTK ("ntk"), YaRN ("yarn", with its own
temperature 0.1 ln s + 1) and YaRN with LongRoPE's attention factor sqrt(1 + ln s / ln L) only
("yarn_longrope_temperature"), which separates the searched frequencies from the temperature.
The scores come from TEST documents that the search never saw (`longrope_run` selects the two
sets disjoint and records both by name).

Statistic, per control c (`compare`): with b_{d, j} the mean NLL of block j (`block` targets) of
test document d,

    delta_c = (1 / D) sum_d mean_j (b^win_{d, j} - b^c_{d, j})        (nats per token)

and its paired, document-stratified block-bootstrap interval [lo_c, hi_c] at the rule's
confidence (`eval.intervals.stratified_interval`); the perplexity ratio is exp(delta_c) with
interval [exp(lo_c), exp(hi_c)].

Rule (`config.verdict_rule` of configs/longrope_search_smollm2.py, written before the run, plain
data so another claim mechanism can take it over):

    {"controls": [...], "confidence": 0.95, "margin": 0.0, "block": 256, "resamples": 2000, "seed": 0}

    "yes"        hi_c < -margin for every control      (lower than each, beyond the block noise)
    "no"         delta_c >= -margin for some control    (not lower than that control at all)
    "undecided"  otherwise                              (lower on every mean, some interval reaches -margin)

`verdict(rule, comparisons)` is the one function that applies it.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from longctx_jax.eval.intervals import block_means, resample_indices, stratified_interval

CONTROLS = ("linear", "ntk", "yarn", "yarn_longrope_temperature")
RULE_FIELDS = ("claim", "controls", "confidence", "margin", "block", "resamples", "seed")
VERDICTS = ("yes", "no", "undecided")


def check_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """Validates a verdict rule (module doc) and returns it as a plain dict.

    Raises:
      ValueError: a missing or unknown field, no controls, a control outside `CONTROLS`,
        confidence outside (0, 1), a negative margin, or a non-positive block / resamples.
    """
    rule = dict(rule)
    missing = [f for f in RULE_FIELDS if f not in rule]
    unknown = sorted(set(rule) - set(RULE_FIELDS))
    if missing or unknown:
        raise ValueError(f"verdict rule: missing fields {missing}, unknown fields {unknown}; "
                         f"valid: {RULE_FIELDS}")
    controls = tuple(rule["controls"])
    bad = [c for c in controls if c not in CONTROLS]
    if not controls or bad or isinstance(rule["controls"], str):
        raise ValueError(f"verdict rule controls {rule['controls']!r}: need a non-empty tuple of {CONTROLS}")
    if not 0.0 < float(rule["confidence"]) < 1.0:
        raise ValueError(f"verdict rule confidence must be in (0, 1), got {rule['confidence']}")
    if not math.isfinite(float(rule["margin"])) or float(rule["margin"]) < 0:
        raise ValueError(f"verdict rule margin must be a finite number >= 0, got {rule['margin']}")
    for key in ("block", "resamples"):
        if int(rule[key]) <= 0 or int(rule[key]) != rule[key]:
            raise ValueError(f"verdict rule {key} must be a positive integer, got {rule[key]!r}")
    rule["controls"] = list(controls)
    return rule


def blocks_of(nll_NT: np.ndarray, block: int) -> list[list[float]]:
    """Block means `[N][T // block]` of per-target NLL `[N, T]` (what the JSON stores per method)."""
    return [block_means(row, block).tolist() for row in np.asarray(nll_NT, np.float64)]


def method_summary(blocks: Sequence[Sequence[float]], *, confidence: float, resamples: int,
                   seed: int) -> dict[str, float]:
    """Perplexity exp(mean NLL) over documents with its stratified block-bootstrap interval.

    Args:
      blocks: block mean NLLs, one list per document.

    Returns:
      {"nll", "ppl", "ppl_lo", "ppl_hi", "resamples"}.
    """
    s = stratified_interval([np.asarray(b) for b in blocks], resamples=resamples, confidence=confidence,
                            seed=seed)
    return {"nll": s["mean"], "ppl": math.exp(s["mean"]), "ppl_lo": math.exp(s["lo"]),
            "ppl_hi": math.exp(s["hi"]), "resamples": s["resamples"]}


def compare(winner: Sequence[Sequence[float]], control: Sequence[Sequence[float]], *, confidence: float,
            resamples: int, seed: int) -> dict[str, float]:
    """delta = mean NLL(winner) - NLL(control) with its paired interval (module doc).

    Args:
      winner, control: block mean NLLs per document, on the same documents and blocks.

    Returns:
      {"nll_diff", "nll_diff_lo", "nll_diff_hi", "ppl_ratio", "ppl_ratio_lo", "ppl_ratio_hi"}.

    Raises:
      ValueError: the two do not cover the same documents and blocks.
    """
    shapes = [len(b) for b in winner], [len(b) for b in control]
    if shapes[0] != shapes[1]:
        raise ValueError(f"winner and control blocks differ per document: {shapes[0]} vs {shapes[1]}")
    diffs = [np.asarray(a, np.float64) - np.asarray(b, np.float64)
             for a, b in zip(winner, control, strict=True)]
    idx = resample_indices([d.size for d in diffs], resamples, seed)
    s = stratified_interval(diffs, indices=idx, confidence=confidence)
    return {"nll_diff": s["mean"], "nll_diff_lo": s["lo"], "nll_diff_hi": s["hi"],
            "ppl_ratio": math.exp(s["mean"]), "ppl_ratio_lo": math.exp(s["lo"]),
            "ppl_ratio_hi": math.exp(s["hi"])}


def verdict(rule: Mapping[str, Any], comparisons: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """Applies the rule (module doc) to the per-control comparisons of `compare`.

    Returns:
      {"verdict": "yes" | "no" | "undecided", "reason": the controls that decided it}.

    Raises:
      ValueError: a control of the rule has no comparison.
    """
    rule = check_rule(rule)
    missing = [c for c in rule["controls"] if c not in comparisons]
    if missing:
        raise ValueError(f"no comparison for the rule's controls {missing}; have {sorted(comparisons)}")
    margin = float(rule["margin"])
    not_lower = [c for c in rule["controls"] if comparisons[c]["nll_diff"] >= -margin]
    if not_lower:
        detail = ", ".join(f"{c}: ppl ratio {comparisons[c]['ppl_ratio']:.4f}" for c in not_lower)
        return {"verdict": "no", "reason": f"not lower than {detail}"}
    unclear = [c for c in rule["controls"] if comparisons[c]["nll_diff_hi"] >= -margin]
    if unclear:
        detail = ", ".join(f"{c}: ratio interval [{comparisons[c]['ppl_ratio_lo']:.4f}, "
                           f"{comparisons[c]['ppl_ratio_hi']:.4f}]" for c in unclear)
        return {"verdict": "undecided",
                "reason": f"lower on the mean, interval reaches the margin for {detail}"}
    return {"verdict": "yes", "reason": "every control's interval lies below the margin: "
            + ", ".join(f"{c} {comparisons[c]['ppl_ratio']:.4f}" for c in rule["controls"])}


def recompute(summary: Mapping[str, Any], blocks: Mapping[str, Sequence[Sequence[float]]]) -> dict[str, Any]:
    """The comparisons and verdict the stored rule gives on the stored test blocks.

    Args:
      summary: a run's summary.json (`longrope_run.run_longrope_search`).
      blocks: its test_blocks.json "blocks" (`{method: [N][blocks]}`, the winner as "search").

    Returns:
      {"comparisons": {control: `compare(...)`}, "verdict": `verdict(...)`}.
    """
    rule = check_rule(summary["verdict_rule"])
    stats = dict(confidence=float(rule["confidence"]), resamples=int(rule["resamples"]),
                 seed=int(rule["seed"]))
    comparisons = {m: compare(blocks["search"], blocks[m], **stats)
                   for m in summary["test"]["comparisons"]}
    return {"comparisons": comparisons, "verdict": verdict(rule, comparisons)}


def report(summary: Mapping[str, Any]) -> str:
    """Markdown of a run: held-out perplexities with intervals, each comparison, the verdict."""
    test, rule = summary["test"], summary["verdict_rule"]
    level = f"{100 * float(rule['confidence']):g} %"
    lines = [f"SmolLM2-135M, {summary['original_length']:,} -> {summary['target_length']:,} tokens "
             f"(factor {summary['factor']:g}), no fine-tuning. Search documents: "
             f"{', '.join(summary['search_documents'])}; test documents (never scored by the search): "
             f"{', '.join(summary['test_documents'])}. Search: population "
             f"{summary['search']['population_size']}, {summary['search']['generations']} generations, "
             f"{summary['search']['candidates_scored']} candidates scored; the winner is "
             + (f"the seed `{summary['search']['winner_is_seed']}`" if summary["search"]["winner_is_seed"]
                else "not one of the seeds") + f" (n_hat {summary['search']['best_n_hat']}).", "",
             f"| method | held-out perplexity [{level}] | winner / method, perplexity ratio [{level}] "
             "| a control of the rule |",
             "| --- | --- | --- | --- |"]
    for name, m in test["methods"].items():
        c = test["comparisons"].get(name)
        ratio = (f"{c['ppl_ratio']:.4f} [{c['ppl_ratio_lo']:.4f}, {c['ppl_ratio_hi']:.4f}]" if c else "-")
        label = "searched factors (the winner)" if name == "search" else f"`{name}`"
        control = "yes" if name in rule["controls"] else "-"
        ppl = f"{m['ppl']:.4f} [{m['ppl_lo']:.4f}, {m['ppl_hi']:.4f}]"
        lines.append(f"| {label} | {ppl} | {ratio} | {control} |")
    v = summary["verdict"]
    bound = f"-{rule['margin']:g}" if rule["margin"] else "0"
    lines += ["", f"**Verdict: {v['verdict']}** ({v['reason']}). Rule: \"yes\" if the paired {level} "
              f"interval of NLL(winner) - NLL(control) lies below {bound} for every control, "
              f"\"no\" if any mean difference is >= {bound}, else \"undecided\"; blocks of "
              f"{rule['block']} targets, {rule['resamples']} resamples."]
    return "\n".join(lines) + "\n"
