"""Train a decoder from a config file.

  python -m experiments.train --config configs/tiny.py --config.workdir=runs/tiny
"""

from absl import app, logging
from ml_collections import config_flags

from longctx_jax.parallel import distributed
from longctx_jax.train.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Experiment config file.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    distributed.initialize(config)  # multi-host only, when config.mesh.distributed is set
    summary = train_and_evaluate(config, config.workdir)
    print(f"run directory: {config.workdir}")
    for name in ("steps", "final_val_loss", "final_val_bpb", "unigram_bpb"):
        if name in summary:
            print(f"{name}: {summary[name]}")


if __name__ == "__main__":
    app.run(main)
