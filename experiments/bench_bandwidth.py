"""Memory read bandwidth and SmolLM2's decode bytes per token, written to `<workdir>/bench_bandwidth.json`.

  python -m experiments.bench_bandwidth --config configs/bench_bandwidth.py

What is measured and how: `longctx_jax/bench/bandwidth.py`.
"""

from longctx_jax import config_cli
from longctx_jax.bench import bandwidth

_CONFIG = config_cli.define_config("configs/bench_bandwidth.py")


if __name__ == "__main__":
    config_cli.run(bandwidth.run, _CONFIG)
