"""Training-throughput benchmark of the tiny config.

  python -m experiments.bench_train --config configs/bench_train.py --config.workdir=runs/bench_train

Times `steps` jitted train steps after `warmup` (compilation excluded) and reports tokens/s,
the compiled step's memory analysis and the process's peak resident memory.
"""

import ml_collections

from configs import tiny


def get_config() -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.workdir = "runs/bench_train"
    config.bench = ml_collections.ConfigDict()
    config.bench.warmup = 2
    config.bench.steps = 10
    return config
