"""Time and memory of attention implementations, written to `<workdir>/bench_attention.json`.

  python -m experiments.bench_attention --config configs/bench_attention.py:quick

What is measured and how: `longctx_jax/bench/attention.py`.
"""

from longctx_jax import config_cli
from longctx_jax.bench import attention

_CONFIG = config_cli.define_config("configs/bench_attention.py")


if __name__ == "__main__":
    config_cli.run(attention.run, _CONFIG)
