"""Train a decoder from a config file.

  python -m experiments.train --config configs/tiny.py --config.workdir=runs/tiny
"""

from absl import logging

from longctx_jax import config_cli
from longctx_jax.parallel import distributed
from longctx_jax.train.trainer import train_and_evaluate

_CONFIG = config_cli.define_config("configs/tiny.py")


def main(config) -> None:
    logging.set_verbosity(logging.WARNING)
    distributed.initialize(config)  # multi-host only, when config.mesh.distributed is set
    summary = train_and_evaluate(config, config.workdir)
    print(f"run directory: {config.workdir}")
    for name in ("steps", "final_val_loss", "final_val_bpb", "unigram_bpb"):
        if name in summary:
            print(f"{name}: {summary[name]}")


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
