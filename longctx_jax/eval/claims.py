"""The decoder reproductions (`docs/reproductions.md`): each claim's runs, protocols and verdicts.

A driver (`CLAIMS[name]`) trains the runs its claims need, once per seed of the config
(reusing finished runs), scores them on held-out single-document windows with the protocols of
`eval/reproduction.py`, and returns a JSON-able dict holding the claims with their rules (read
from the config, `configs/repro_*.py: CLAIMS`), the per-seed, per-document block NLLs of every
series, their means with 95 % intervals, and the verdicts computed by `eval/verdicts.py`.
Runs are named by config spec ("repro_alibi:rope" = `configs/repro_alibi.py:rope`) and trained
or loaded through a `Runs` object (`longctx_jax.train.runs.TrainedRuns`), so this module needs
no trainer.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import ml_collections
import numpy as np
from flax import nnx

from longctx_jax.eval.reproduction import block_series, eval_windows, stream_nll, target_nll
from longctx_jax.eval.scoring import EvalModel
from longctx_jax.eval.verdicts import evaluate_claims, parse_series, series_needed, summarize_series

BASE = "repro_alibi:rope"  # the RoPE base model every fine-tuning claim starts from
SIZES = ("claim", "smoke")


class Runs(Protocol):
    """Trains and loads runs named by config spec (see `longctx_jax.train.runs.TrainedRuns`)."""

    def config(self, spec: str, seed: int | None = None) -> ml_collections.ConfigDict: ...

    def train(self, spec: str, seed: int | None = None) -> dict[str, Any]: ...

    def load(self, spec: str, seed: int | None = None, **model_changes: Any) -> nnx.Module: ...


@dataclass(frozen=True)
class Driver:
    """One reproduction: the config holding its claims, what to train, the models it scores.

    Attributes:
      config: the config spec whose `claims` and `eval` this driver uses.
      train: run specs trained per seed, in order (a fine-tune after its base).
      models: {run name in the series keys: (run spec, model changes for `Runs.load`)}; a change
        given as a callable is called with the config of `config` (e.g. the window width).
      display: the multiples of L scored with the "full" protocol for the tables.
      protocol: "full" (with "chunked" where a rule asks) or "stream".
    """

    config: str
    train: tuple[str, ...]
    models: dict[str, tuple[str, dict]] = field(default_factory=dict)
    display: tuple[int, ...] = (1, 2, 4)
    protocol: str = "full"


def _scaling(rope_type: str) -> Callable[[ml_collections.ConfigDict], dict]:
    def make(config: ml_collections.ConfigDict) -> dict:
        yarn = dict(config.model.rope_scaling)
        if rope_type == "linear":
            return {"rope_type": "linear", "factor": yarn["factor"]}
        return {**yarn, "rope_type": rope_type}
    return make


CLAIMS: dict[str, Driver] = {
    "alibi": Driver("repro_alibi:alibi", (BASE, "repro_alibi:alibi", "repro_alibi:nope"),
                    {v: (f"repro_alibi:{v}", {}) for v in ("rope", "alibi", "nope")}, display=(1, 8)),
    "pi": Driver("repro_pi:pi", (BASE, "repro_pi:pi", "repro_pi:noscale"),
                 {"extrapolation": (BASE, {}), "pi_finetuned": ("repro_pi:pi", {}),
                  "noscale_finetuned": ("repro_pi:noscale", {})}),
    "yarn": Driver("repro_yarn:yarn", (BASE, "repro_pi:pi", "repro_yarn:yarn"),
                   {"pi_finetuned": ("repro_pi:pi", {}), "yarn_finetuned": ("repro_yarn:yarn", {}),
                    "none_no_finetune": (BASE, {}),
                    **{f"{t}_no_finetune": (BASE, {"rope_scaling": _scaling(t)})
                       for t in ("linear", "ntk", "dynamic", "yarn")}}),
    "streaming": Driver("repro_streaming:sinks", (BASE,), {"sinks": (BASE, {}), "nosinks": (BASE, {})},
                        protocol="stream"),
    "window": Driver("repro_sliding_window:window", (BASE, "repro_sliding_window:window"),
                     {"dense_trained": (BASE, {}), "window_trained": ("repro_sliding_window:window", {}),
                      "dense_trained_window_at_eval": (BASE, {"window": lambda c: c.model.attention.window})},
                     display=(1, 2, 4, 8)),
    "progressive": Driver("repro_progressive:stage2",
                          (BASE, "repro_pi:pi", "repro_progressive:stage1", "repro_progressive:stage2"),
                          {"pi": ("repro_pi:pi", {}), "stage1": ("repro_progressive:stage1", {}),
                           "stage2": ("repro_progressive:stage2", {})}),
}


def sized(spec: str, size: str) -> str:
    """The run spec at `size` ("repro_pi:pi" -> "repro_pi:pi:smoke")."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid: {SIZES}")
    return spec if size == "claim" else f"{spec}:smoke"


def _series_keys(driver: Driver, claims) -> list[str]:
    keys = [f"{run}/{driver.protocol}@{k}L" for run in driver.models for k in driver.display] \
        if driver.protocol == "full" else []
    return list(dict.fromkeys(keys + series_needed(claims)))


def _summary(run: dict) -> dict:
    return {k: v for k, v in run.items() if isinstance(v, int | float | str)}


def run_claim(name: str, runs: Runs, *, size: str = "claim") -> dict:
    """Trains, scores and judges the claims of driver `name` (`CLAIMS`) at `size`.

    Returns:
      {"driver", "size", "config", "seeds", "train_len", "block", "eval", "runs", "series",
      "summaries", "claims"}: `claims` carries each claim's text, rules, paired differences with
      intervals and verdicts; `series` the block NLLs `{key: {seed: {document: [...]}}}`.
    """
    if name not in CLAIMS:
        raise ValueError(f"unknown claim {name!r}; valid: {tuple(CLAIMS)}")
    driver = CLAIMS[name]
    config = runs.config(sized(driver.config, size))
    claims = [dict(c) for c in config.claims]
    keys = _series_keys(driver, claims)
    unknown = sorted({parse_series(k)[0] for k in keys} - set(driver.models))
    if unknown:
        raise ValueError(f"rules of {name!r} name runs {unknown}; the driver scores {sorted(driver.models)}")
    train_len, block, seeds = int(config.data.seq_len), int(config.eval.block), [int(s) for s in config.seeds]
    if driver.protocol == "stream":
        num_tokens = int(config.eval.stream_len) + 1
        windows, doc_ids = eval_windows(int(config.eval.num_docs), num_tokens)
    else:
        base_len = int(runs.config(sized(BASE, size)).data.seq_len)
        train_len = base_len
        longest = max(parse_series(k)[2] for k in keys) * base_len
        windows, doc_ids = eval_windows(int(config.eval.num_windows), longest + 1)
    result: dict[str, Any] = {"driver": name, "size": size, "config": sized(driver.config, size),
                              "seeds": seeds, "train_len": train_len, "block": block,
                              "eval": {"windows": int(windows.shape[0]), "documents": len(set(doc_ids)),
                                       "window_tokens": int(windows.shape[1]), "split": "validation"},
                              "runs": {}, "series": {k: {} for k in keys}}
    for seed in seeds:
        for spec in driver.train:
            result["runs"].setdefault(spec, {})[str(seed)] = _summary(runs.train(sized(spec, size), seed))
        for run, (spec, changes) in driver.models.items():
            run_keys = [k for k in keys if parse_series(k)[0] == run]
            if not run_keys:
                continue
            changes = {k: v(config) if callable(v) else v for k, v in changes.items()}
            module = runs.load(sized(spec, size), seed, **changes)
            model = EvalModel(module) if driver.protocol != "stream" else None
            for key in run_keys:
                _, protocol, k = parse_series(key)
                if protocol == "stream":
                    eval_cfg = runs.config(sized(f"repro_streaming:{run}", size)).eval
                    nll = stream_nll(module, windows, int(eval_cfg.cache_size), int(eval_cfg.sinks))
                else:
                    nll = target_nll(model, windows, k * train_len, protocol, train_len)
                result["series"][key][str(seed)] = block_series(nll, doc_ids, block)
    result["eval"]["target_tokens"] = {k: int(sum(len(b) for b in s[str(seeds[0])].values()) * block)
                                       for k, s in result["series"].items()}
    result["summaries"] = {k: summarize_series(s) for k, s in result["series"].items()}
    result["claims"] = evaluate_claims(claims, result["series"])
    return result


def recompute(result: dict) -> list[dict]:
    """The claims of a stored result evaluated afresh from its stored series by its stored rules."""
    return evaluate_claims([{k: c[k] for k in ("name", "source", "claim")}
                            | {"rules": [x["rule"] for x in c["comparisons"]]} for c in result["claims"]],
                           result["series"])


def check_consistent(result: dict) -> None:
    """Raises ValueError if a stored verdict or difference is not what its rule gives on its series."""
    for stored, new in zip(result["claims"], recompute(result), strict=True):
        if stored["verdict"] != new["verdict"]:
            raise ValueError(f"claim {stored['name']!r}: stored verdict {stored['verdict']!r}, rule gives "
                             f"{new['verdict']!r}")
        for a, b in zip(stored["comparisons"], new["comparisons"], strict=True):
            same = np.isclose(a["delta_nll"], b["delta_nll"], rtol=0, atol=1e-9)
            if a["verdict"] != b["verdict"] or not same:
                raise ValueError(f"claim {stored['name']!r}, rule {a['rule']['name']!r}: stored "
                                 f"{a['verdict']} / {a['delta_nll']}, rule gives {b['verdict']} / "
                                 f"{b['delta_nll']}")
