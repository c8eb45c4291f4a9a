"""Evaluate context-extension methods on a pretrained model: perplexity, passkey, needle, report.

  python -m experiments.extend --config configs/extend_smollm2.py --config.workdir=runs/extend_smollm2

Writes workdir/results.json (resumed if present), ppl_vs_length.png, passkey.png,
niah_<method>.png and report.md. See configs/extend_smollm2.py for the presets.
"""

import time

from absl import app, logging
from ml_collections import config_flags

from longctx_jax.eval.methods import config_changes, scaling_factor, with_config
from longctx_jax.eval.results import ResultStore
from longctx_jax.eval.suite import SuiteSpec, evaluate, finalize, run_inputs
from longctx_jax.models.llama import load_gguf, smollm2_path

_CONFIG = config_flags.DEFINE_config_file("config", "configs/extend_smollm2.py", "Experiment config file.")


def resolve_preset(config) -> None:
    """Fills every field left None with the value of `config.presets[config.preset]`."""
    if config.preset not in config.presets:
        raise ValueError(f"unknown preset {config.preset!r}; valid: {sorted(config.presets)}")

    def fill(node, values):
        for key, value in values.items():
            if hasattr(value, "items"):
                fill(node[key], value)
            elif node[key] is None:
                node[key] = value

    with config.unlocked():
        fill(config, config.presets[config.preset])


def spec_for(config, method: str) -> SuiteSpec:
    """The sweeps one method runs (retrieval grids only for the methods that ask for them)."""
    values = dict(config.eval)
    if method not in config.passkey_methods:
        values["passkey_lengths"] = ()
    if method not in config.niah_methods:
        values["niah_lengths"] = ()
    return SuiteSpec.from_mapping(values)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    resolve_preset(config)
    start = time.time()
    lengths = [*config.eval.ppl_lengths, *config.eval.strided_windows, *config.eval.passkey_lengths,
               *config.eval.niah_lengths]
    target, factor = scaling_factor(config.train_length, config.target_length, lengths)
    checkpoint = config.checkpoint or smollm2_path()
    base, tokenizer = load_gguf(checkpoint, dtype=config.dtype, attention_impl=config.attention_impl)
    inputs = run_inputs(checkpoint, tokenizer, train_length=config.train_length, target_length=target,
                        factor=factor, dtype=config.dtype)
    store = ResultStore(f"{config.workdir}/results.json", inputs=inputs, meta={
        "model": config.model_name, "train_length": config.train_length, "target_length": target,
        "factor": factor, "preset": config.preset, "attention_impl": config.attention_impl})
    timing = dict(store.data.get("timing_s", {}))
    for method in config.methods:
        t0 = time.time()
        changes = config_changes(method, factor=factor, train_length=config.train_length,
                                 rotary_dim=base.cfg.head_dim, window=config.window, sinks=config.sinks,
                                 longrope=config.longrope)
        model = with_config(base, **changes)
        evaluate(model, tokenizer, store, method=method, spec=spec_for(config, method), inputs=changes)
        timing[method] = timing.get(method, 0.0) + time.time() - t0
        store.update_meta({"timing_s": timing, "rope_scaling": {**store.data.get("rope_scaling", {}),
                                                                method: changes["rope_scaling"]}})
    timing["total_this_run"] = time.time() - start
    store.update_meta({"timing_s": timing})
    notes = (f"Preset `{config.preset}`; methods {', '.join(config.methods)}; RoPE factor "
             f"{factor:g} = {target} / {config.train_length}; attention `{config.attention_impl}`. "
             f"Wall time of the last invocation: {timing['total_this_run']:.0f} s "
             f"(per method, all invocations: "
             + ", ".join(f"{m} {timing[m]:.0f} s" for m in config.methods if m in timing) + ").")
    if "streaming" in config.methods:
        notes += " Streaming runs without a KV cache: sinks keep their true positions."
    for path in finalize(store, config.workdir, notes=notes):
        print(path)
    print(f"wall time this run: {timing['total_this_run']:.0f} s")


if __name__ == "__main__":
    app.run(main)
