"""Fine-tune a pretrained model at a longer context (PI, YaRN, ABF, LongRoPE, LongLoRA).

  python -m experiments.finetune --config configs/finetune_smollm2.py --config.workdir=runs/ft_smollm2

Writes workdir/config.json, metrics.jsonl, TensorBoard events, checkpoints/ and summary.json
(`longctx_jax.train.finetune.finetune`); rerunning resumes. Evaluate the result with
`python -m experiments.extend --config configs/extend_smollm2.py --config.checkpoint=<workdir>`.
"""

from absl import logging

from longctx_jax import config_cli
from longctx_jax.train.finetune import finetune

_CONFIG = config_cli.define_config("configs/finetune_smollm2.py")


def main(config) -> None:
    logging.set_verbosity(logging.WARNING)
    summary = finetune(config, config.workdir)
    print(f"run directory: {config.workdir}")
    for name in ("steps", "trainable_params", "num_params", "final_val_loss", "final_val_ppl"):
        if name in summary:
            print(f"{name}: {summary[name]}")


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
