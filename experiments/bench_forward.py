"""Prefill and decode tokens/s of the shipped SmolLM2-135M, written to `<workdir>/bench_forward.json`.

  python -m experiments.bench_forward --config configs/bench_forward.py --config.workdir=runs/bench_forward

With the `bench` extra (`pip install -e ".[bench]"`) Hugging Face transformers runs the same
weights in the same run as the peer. What is measured and how: `longctx_jax/bench/forward.py`.
"""

from longctx_jax import config_cli
from longctx_jax.bench import forward

_CONFIG = config_cli.define_config("configs/bench_forward.py")


if __name__ == "__main__":
    config_cli.run(forward.run, _CONFIG)
