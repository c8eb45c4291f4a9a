"""The decoder reproductions (`docs/reproductions.md`): each claim's runs, protocol and verdict.

A claim trains the runs it needs (reusing finished ones), evaluates them with the protocols of
`eval/reproduction.py` on held-out stdlib documents and returns a JSON-able dict whose
"reproduced*" entries apply the rule stated with the claim in its config. Runs are named by
config spec ("repro_alibi:rope" = `configs/repro_alibi.py:rope`) and trained or loaded through a
`Runs` object (`longctx_jax.train.runs.TrainedRuns`), so this module needs no trainer.

`CLAIMS` is the registry `experiments/reproduce.py` dispatches through: `run_claim(name, runs)`.
"""

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import ml_collections
from flax import nnx

from longctx_jax.eval.reproduction import eval_docs, ppl_ratio, ppl_vs_length, stream_ppl, strided_ppl

BASE = "repro_alibi:rope"  # the RoPE base model every fine-tuning claim starts from
ALIBI_VARIANTS = ("rope", "alibi", "nope")
NUM_DOCS = 8


class Runs(Protocol):
    """Trains and loads runs named by config spec (see `longctx_jax.train.runs.TrainedRuns`)."""

    def config(self, spec: str) -> ml_collections.ConfigDict: ...

    def train(self, spec: str) -> dict[str, Any]: ...

    def load(self, spec: str, **model_changes: Any) -> nnx.Module: ...


def _extension_lengths(runs: Runs) -> tuple[int, int, int]:
    """(L, 2L, 4L): the base training length and the fine-tuning target of repro_pi."""
    train_len = runs.config(BASE).data.seq_len
    return train_len, 2 * train_len, runs.config("repro_pi:pi").data.seq_len


def alibi(runs: Runs, variants: Sequence[str] = ALIBI_VARIANTS) -> dict:
    """ALiBi stays flat to 8L (ratio <= 1.1) while unscaled RoPE blows up (ratio >= 2)."""
    bad = [v for v in variants if v not in ALIBI_VARIANTS]
    if bad or not {"alibi", "rope"} <= set(variants):
        raise ValueError(f"alibi variants must include 'alibi' and 'rope' and be among {ALIBI_VARIANTS}, "
                         f"got {list(variants)}")
    lengths = runs.config(BASE).eval.lengths
    docs = eval_docs(NUM_DOCS, lengths[-1] + 1)
    result = {"runs": {}, "ppl": {}, "strided_ppl": {}}
    for variant in variants:
        spec = f"repro_alibi:{variant}"
        config = runs.config(spec)
        result["runs"][variant] = runs.train(spec)
        model = runs.load(spec)
        result["ppl"][variant] = ppl_vs_length(model, docs, lengths)
        result["strided_ppl"][variant] = {f"window{lengths[0]}_stride{config.eval.stride}_doc{lengths[-1]}":
                                          strided_ppl(model, docs, lengths[0], config.eval.stride)}
    ratios = {v: ppl_ratio(result["ppl"][v], lengths) for v in variants}
    result["ppl_ratio_8L_over_L"] = ratios
    result["reproduced"] = bool(ratios["alibi"] <= 1.1 and ratios["rope"] >= 2.0)
    return result


def pi(runs: Runs) -> dict:
    """Fine-tuning with position interpolation beats extrapolation and unscaled fine-tuning at 4L."""
    lengths = _extension_lengths(runs)
    long_len = lengths[-1]
    docs = eval_docs(NUM_DOCS, long_len + 1)
    result = {"runs": {"rope": runs.train(BASE)}, "ppl": {}}
    result["ppl"]["extrapolation"] = ppl_vs_length(runs.load(BASE), docs, lengths)
    for variant in ("pi", "noscale"):
        spec = f"repro_pi:{variant}"
        result["runs"][variant] = runs.train(spec)
        result["ppl"][f"{variant}_finetuned"] = ppl_vs_length(runs.load(spec), docs, lengths)
    at = {k: v[str(long_len)] for k, v in result["ppl"].items()}
    result["ppl_at_4L"] = at
    result["reproduced"] = bool(at["pi_finetuned"] < min(at["extrapolation"], at["noscale_finetuned"]))
    return result


def yarn(runs: Runs) -> dict:
    """YaRN fine-tuned <= PI fine-tuned; without fine-tuning YaRN and dynamic NTK beat linear."""
    lengths = _extension_lengths(runs)
    long_len = lengths[-1]
    docs = eval_docs(NUM_DOCS, long_len + 1)
    result = {"runs": {"rope": runs.train(BASE)}, "ppl": {}}
    for name, spec in (("pi", "repro_pi:pi"), ("yarn", "repro_yarn:yarn")):
        result["runs"][name] = runs.train(spec)
        result["ppl"][f"{name}_finetuned"] = ppl_vs_length(runs.load(spec), docs, lengths)
    result["ppl"]["none_no_finetune"] = ppl_vs_length(runs.load(BASE), docs, lengths)
    yarn_scaling = dict(runs.config("repro_yarn:yarn").model.rope_scaling)
    for rope_type in ("linear", "ntk", "dynamic", "yarn"):
        if rope_type == "linear":
            scaling = {"rope_type": "linear", "factor": yarn_scaling["factor"]}
        else:
            scaling = {**yarn_scaling, "rope_type": rope_type}
        model = runs.load(BASE, rope_scaling=scaling)
        result["ppl"][f"{rope_type}_no_finetune"] = ppl_vs_length(model, docs, lengths)
    at = {k: v[str(long_len)] for k, v in result["ppl"].items()}
    result["ppl_at_4L"] = at
    result["reproduced_finetuned"] = bool(at["yarn_finetuned"] <= at["pi_finetuned"])
    result["reproduced_no_finetune"] = bool(at["yarn_no_finetune"] < at["linear_no_finetune"]
                                            and at["dynamic_no_finetune"] < at["linear_no_finetune"])
    return result


def streaming(runs: Runs) -> dict:
    """Attention sinks keep streaming perplexity lower and flat (last/second eighth <= 1.2)."""
    result = {"runs": {}, "stream": {}}
    for variant in ("sinks", "nosinks"):
        spec = f"repro_streaming:{variant}"
        config = runs.config(spec)
        result["runs"]["rope"] = runs.train(spec)
        docs = eval_docs(config.eval.num_docs, config.eval.stream_len + 1)
        model = runs.load(spec)
        result["stream"][variant] = stream_ppl(model, docs, config.eval.cache_size, config.eval.sinks)
    result["stream_len"], result["cache_size"] = config.eval.stream_len, config.eval.cache_size
    sinks, nosinks = result["stream"]["sinks"], result["stream"]["nosinks"]
    result["sinks_last_over_second_eighth"] = sinks["ppl_by_eighth"][-1] / sinks["ppl_by_eighth"][1]
    flat = result["sinks_last_over_second_eighth"] <= 1.2
    result["reproduced"] = bool(sinks["ppl"] < nosinks["ppl"] and flat)
    return result


def window(runs: Runs) -> dict:
    """Sliding-window training stays flat to 8L (ratio <= 1.1) where dense training blows up (>= 2)."""
    lengths = runs.config(BASE).eval.lengths
    docs = eval_docs(NUM_DOCS, lengths[-1] + 1)
    windowed = "repro_sliding_window:window"
    width = runs.config(windowed).model.attention.window
    result = {"runs": {"dense": runs.train(BASE), "window": runs.train(windowed)}, "ppl": {}}
    result["ppl"]["dense_trained"] = ppl_vs_length(runs.load(BASE), docs, lengths)
    result["ppl"]["window_trained"] = ppl_vs_length(runs.load(windowed), docs, lengths)
    dense_windowed = runs.load(BASE, window=width)
    result["ppl"]["dense_trained_window_at_eval"] = ppl_vs_length(dense_windowed, docs, lengths)
    ratios = {k: ppl_ratio(v, lengths) for k, v in result["ppl"].items()}
    result["ppl_ratio_8L_over_L"] = ratios
    result["reproduced"] = bool(ratios["window_trained"] <= 1.1 and ratios["dense_trained"] >= 2.0)
    return result


def progressive(runs: Runs) -> dict:
    """Extending in two stages (2L, then 4L) is at least as good at 4L as one PI stage."""
    lengths = _extension_lengths(runs)
    long_len = lengths[-1]
    docs = eval_docs(NUM_DOCS, long_len + 1)
    result = {"runs": {"rope": runs.train(BASE)}, "ppl": {}}
    for name, spec in (("pi", "repro_pi:pi"), ("stage1", "repro_progressive:stage1"),
                       ("stage2", "repro_progressive:stage2")):
        result["runs"][name] = runs.train(spec)
        result["ppl"][name] = ppl_vs_length(runs.load(spec), docs, lengths)
    at = {k: v[str(long_len)] for k, v in result["ppl"].items()}
    result["ppl_at_4L"] = at
    result["reproduced"] = bool(at["stage2"] <= at["pi"])
    return result


CLAIMS: dict[str, Callable[..., dict]] = {
    "alibi": alibi, "pi": pi, "yarn": yarn, "streaming": streaming, "window": window,
    "progressive": progressive,
}


def run_claim(name: str, runs: Runs, *, variants: Sequence[str] | None = None) -> dict:
    """Runs claim `name` of `CLAIMS`; `variants` (alibi only) picks its base models."""
    if name not in CLAIMS:
        raise ValueError(f"unknown claim {name!r}; valid: {tuple(CLAIMS)}")
    if variants is not None and name != "alibi":
        raise ValueError(f"variants are an option of the alibi claim only, not of {name!r}")
    if name == "alibi" and variants is not None:
        return alibi(runs, variants)
    return CLAIMS[name](runs)
