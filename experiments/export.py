"""Writes a model (GGUF, HF directory or training run) as a Hugging Face directory (see configs/export.py).

  python -m experiments.export --config configs/export.py --config.source=... --config.out=...
"""

from longctx_jax import config_cli
from longctx_jax.train.export_run import run

_CONFIG = config_cli.define_config("configs/export.py")


def main(config) -> None:
    print(run(config))


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
