"""Flash attention on a GPU: checked against dense, then timed against cuDNN and XLA.

  python -m experiments.bench_gpu --config configs/bench_gpu.py --config.workdir=runs/bench_gpu

Writes `<workdir>/bench_gpu.json`; refuses without a GPU backend and exits non-zero when flash
disagrees with dense. What is measured and how: `longctx_jax/bench/gpu.py`.
"""

from longctx_jax import config_cli
from longctx_jax.bench import gpu

_CONFIG = config_cli.define_config("configs/bench_gpu.py")


def main(config) -> None:
    if (reason := gpu.gpu_missing()) is not None:
        raise SystemExit(reason)
    result = gpu.run(config)
    if "error" in result:
        raise SystemExit(result["error"])


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
