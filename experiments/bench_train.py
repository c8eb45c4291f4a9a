"""Training tokens/s and memory of a config's train step, written to `<workdir>/bench_train.json`.

  python -m experiments.bench_train --config configs/bench_train.py
"""

from longctx_jax import config_cli
from longctx_jax.bench import train

_CONFIG = config_cli.define_config("configs/bench_train.py")


def main(config) -> None:
    for name, value in train.run(config).items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
