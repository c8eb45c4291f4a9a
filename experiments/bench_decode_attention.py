"""A decode step's attention over every layer's cache against the read floor, written to
`<workdir>/bench_decode_attention.json`.

  python -m experiments.bench_decode_attention --config configs/bench_decode_attention.py

What is measured and how: `longctx_jax/bench/decode_attention.py`.
"""

from longctx_jax import config_cli
from longctx_jax.bench import decode_attention

_CONFIG = config_cli.define_config("configs/bench_decode_attention.py")


if __name__ == "__main__":
    config_cli.run(decode_attention.run, _CONFIG)
