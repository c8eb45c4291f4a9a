"""The passkey reproductions (`docs/reproductions.md`): landmark attention and memory tokens (RMT).

Their statistic is exact-match retrieval per example, not block NLL, so their runs are the
synthetic passkey models of `train/synthetic.py: passkey_retrieval` (one per config spec and
seed, trained or reused through a `PasskeyRuns` object) and their series are per-example errors:

    "<run>/passkey@<k>L" -> {seed: {"examples": [1 - hit per example]}}

at k x the training length, `hit` = every answer token of the example is the argmax
(`data/synthetic_passkey.exact_match_hits`). Every example of a seed is one bootstrap block and
one stratum per seed, so `eval/verdicts.py` applies its rules unchanged: a paired difference
method - control is a difference of error rates (within a seed the two series score the same
number of examples; for two variants of one model they are the same examples), with its 95 %
stratified bootstrap interval, and "lower" means fewer failed retrievals.

The claims and their rules live in the configs (`configs/repro_landmark.py`,
`configs/repro_memory_tokens.py`: `claims`, `seeds`); `run_claim` returns the same layout as
`eval/claims.py: run_claim`, so `eval/repro_report.py` renders both.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import ml_collections
import numpy as np

from longctx_jax.eval.verdicts import evaluate_claims, parse_series, series_needed, summarize_series

SIZES = {"claim": "full", "smoke": "small"}  # the claim size and its tiny counterpart, as config presets
STRATUM = "examples"
DISPLAY = (1, 2, 4)  # multiples of the training length scored for the tables, beside what the rules need


class PasskeyRuns(Protocol):
    """Trains or reuses passkey runs by config spec (see `longctx_jax.train.runs.PasskeyRuns`)."""

    def config(self, spec: str, seed: int) -> ml_collections.ConfigDict: ...

    def train(self, spec: str, seed: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PasskeyDriver:
    """One passkey reproduction.

    Attributes:
      config: the config file (without ".py") whose `claims` and `seeds` it uses.
      runs: {run name in the series keys: (config variant with "{preset}" for the size's preset,
        evaluation variant of that run's results)}.
    """

    config: str
    runs: dict[str, tuple[str, str]]


DRIVERS: dict[str, PasskeyDriver] = {
    "landmark": PasskeyDriver("repro_landmark", {
        "landmark_grouped": ("{preset}", "grouped_softmax"),
        "landmark_topk": ("{preset}", "top{top_k}_retrieval"),
        "no_landmark": ("{preset}:no_landmark", "causal_softmax"),
    }),
    "memory_tokens": PasskeyDriver("repro_memory_tokens", {
        "memory": ("{preset}", "memory"),
        "reset_memory": ("{preset}", "reset_memory"),
    }),
}


def config_spec(name: str, size: str = "claim") -> str:
    """The spec of driver `name`'s claim config at `size` ("repro_landmark:full")."""
    if name not in DRIVERS:
        raise ValueError(f"unknown passkey claim {name!r}; valid: {tuple(DRIVERS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid: {tuple(SIZES)}")
    return f"{DRIVERS[name].config}:{SIZES[size]}"


def _errors(result: Mapping, variant: str, length: int) -> list[float]:
    hits = result["hits"].get(variant, {}).get(str(length))
    if hits is None:
        raise ValueError(f"run {result['config']['workdir']!r} has no hits for variant {variant!r} at "
                         f"length {length}; it has {sorted(result['hits'])} at "
                         f"{sorted(next(iter(result['hits'].values())))}")
    return [1.0 - float(h) for h in hits]


def _summary(result: Mapping) -> dict:
    keep = ("method", "steps", "train_length", "final_train_loss", "train_seconds", "chance", "eval_examples",
            "device", "jax_version", "git_commit")
    return {k: result[k] for k in keep if k in result}


def run_claim(name: str, runs: PasskeyRuns, *, size: str = "claim") -> dict:
    """Trains (or reuses), scores and judges the claims of passkey driver `name` at `size`.

    Returns:
      {"driver", "size", "protocol": "passkey", "config", "seeds", "train_len", "eval", "runs",
      "series", "summaries", "claims"}, the layout of `eval/claims.py: run_claim` with per-example
      errors as the series.
    """
    spec = config_spec(name, size)
    driver = DRIVERS[name]
    preset = SIZES[size]
    config = runs.config(spec, 0)
    claims = [dict(c) for c in config.claims]
    seeds = [int(s) for s in config.seeds]
    keys = series_needed(claims)
    keys = list(dict.fromkeys([f"{run}/passkey@{k}L" for run in driver.runs for k in DISPLAY] + keys))
    for key in keys:
        run, protocol, _ = parse_series(key)
        if protocol != "passkey" or run not in driver.runs:
            raise ValueError(f"rules of {name!r} compare {key!r}; the driver scores "
                             f"'<run>/passkey@kL' for run in {sorted(driver.runs)}")
    train_len = int(config.train_length)
    lengths = sorted({parse_series(k)[2] for k in keys})
    bad = [k for k in lengths if k * train_len not in [train_len, *config.eval_lengths]]
    if bad:
        raise ValueError(f"rules of {name!r} ask for {bad} x L; the runs are scored at "
                         f"{[train_len, *config.eval_lengths]} (L = {train_len})")
    result: dict[str, Any] = {"driver": name, "size": size, "protocol": "passkey", "config": spec,
                              "seeds": seeds, "train_len": train_len, "runs": {},
                              "series": {k: {} for k in keys}}
    for seed in seeds:
        done = {}
        for run, (variant, evaluation) in driver.runs.items():
            run_spec = f"{driver.config}:{variant.format(preset=preset)}"
            if run_spec not in done:
                done[run_spec] = runs.train(run_spec, seed)
                result["runs"].setdefault(run_spec, {})[str(seed)] = _summary(done[run_spec])
            out = done[run_spec]
            evaluation = evaluation.format(top_k=out["config"].get("top_k"))
            for key in keys:
                if parse_series(key)[0] == run:
                    length = parse_series(key)[2] * train_len
                    result["series"][key][str(seed)] = {STRATUM: _errors(out, evaluation, length)}
    examples = {len(s[str(seeds[0])][STRATUM]) for s in result["series"].values()}
    result["eval"] = {"examples_per_seed": sorted(examples), "lengths": [k * train_len for k in lengths],
                      "chance": 1.0 / int(config.num_keys)}
    result["summaries"] = {k: summarize_series(s) for k, s in result["series"].items()}
    result["claims"] = evaluate_claims(claims, result["series"])
    return result


def accuracy(summary: Mapping) -> tuple[float, float, float]:
    """(exact-match accuracy, its 95 % interval's low and high end) from a passkey series summary."""
    return 1.0 - summary["nll"], 1.0 - summary["nll_hi"], 1.0 - summary["nll_lo"]


def per_seed_accuracy(series: Mapping) -> list[float]:
    """Exact-match accuracy of each seed of a passkey series, in seed order."""
    return [1.0 - float(np.mean(series[s][STRATUM])) for s in sorted(series, key=int)]
