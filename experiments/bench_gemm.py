"""XLA:CPU vs torch GEMM rates per XLA flag setting, written to `<workdir>/bench_gemm.json`.

  python -m experiments.bench_gemm --config configs/bench_gemm.py

What is measured and how: `longctx_jax/bench/gemm.py`.
"""

from longctx_jax import config_cli
from longctx_jax.bench import gemm

_CONFIG = config_cli.define_config("configs/bench_gemm.py")


if __name__ == "__main__":
    config_cli.run(gemm.run, _CONFIG)
