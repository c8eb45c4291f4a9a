"""Evaluate context-extension methods on a pretrained model: perplexity, passkey, needle, report.

  python -m experiments.extend --config configs/extend_smollm2.py --config.workdir=runs/extend_smollm2

A fine-tuning run (`experiments.finetune`) is evaluated the same way with
`--config.checkpoint=<its workdir>`: the trained model is rebuilt with LoRA merged
(`longctx_jax.train.finetune.load_finetuned`) and method "none" is it as fine-tuned.

Writes workdir/results.json (resumed if present), ppl_vs_length.png, passkey.png,
niah_<method>.png and report.md (`longctx_jax.eval.extension.run_extension`). See
configs/extend_smollm2.py for its variants (`configs/extend_smollm2.py:full`).
"""

from absl import logging

from longctx_jax import config_cli
from longctx_jax.eval.extension import run_extension
from longctx_jax.train.finetune import is_run_directory, load_finetuned

_CONFIG = config_cli.define_config("configs/extend_smollm2.py")


def main(config) -> None:
    logging.set_verbosity(logging.WARNING)
    loaded = load_finetuned(config.checkpoint) if is_run_directory(config.checkpoint) else None
    for path in run_extension(config, loaded=loaded):
        print(path)


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
