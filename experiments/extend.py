"""Evaluate context-extension methods on a pretrained model: perplexity, passkey, needle, report.

  python -m experiments.extend --config configs/extend_smollm2.py --config.workdir=runs/extend_smollm2

A fine-tuning run (`experiments.finetune`) is evaluated the same way with
`--config.checkpoint=<its workdir>`: the trained model is rebuilt with LoRA merged
(`longctx_jax.train.finetune.load_finetuned`) and method "none" is it as fine-tuned.
`--config.finetuned="{'pi_ft': RUN_DIR, ...}"` (variant `:finetuned`) adds fine-tuning runs of the
same base to the base's methods in one report. A run trained on the stdlib corpus is scored on
documents of its held-out split only (`eval.ppl_split=validation`; refused otherwise).

Writes workdir/results.json (resumed if present), ppl_vs_length.png, passkey.png,
niah_<method>.png and report.md (`longctx_jax.eval.extension.run_extension`). See
configs/extend_smollm2.py for its variants (`configs/extend_smollm2.py:full`).
"""

from absl import logging

from longctx_jax import config_cli
from longctx_jax.eval.extension import check_held_out, run_extension
from longctx_jax.train.finetune import is_run_directory, load_finetuned, training_data

_CONFIG = config_cli.define_config("configs/extend_smollm2.py")


def main(config) -> None:
    logging.set_verbosity(logging.WARNING)
    runs = dict(config.finetuned or {})
    if is_run_directory(config.checkpoint):
        runs["checkpoint"] = config.checkpoint
    check_held_out(config, {label: training_data(path) for label, path in runs.items()})
    loaded = load_finetuned(runs.pop("checkpoint")) if "checkpoint" in runs else None
    finetuned = {label: load_finetuned(path) for label, path in runs.items()}
    for path in run_extension(config, loaded=loaded, finetuned=finetuned):
        print(path)


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
