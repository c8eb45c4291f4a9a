"""GPU attention benchmark: Pallas flash (Triton) vs cuDNN vs XLA, after a correctness check.

  make bench-gpu
  python -m experiments.bench_gpu --config configs/bench_gpu.py --config.workdir=runs/bench_gpu

Needs a GPU and `pip install -e ".[cuda13]"` (or `.[cuda12]`); refuses to run elsewhere.
First every kernel is checked against the dense float32 oracle on small shapes (forward and
gradients; `check_*`), then forward and forward+backward TFLOP/s are timed for causal and
a sliding window at each length and head dim. Issue targets it reports against: flash
>= 0.8x cuDNN causal forward at 8K, D = 128; a 4K window at 32K >= 3.5x faster than dense
causal.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.workdir = "runs/bench_gpu"
    config.lengths = (2048, 4096, 8192, 16384, 32768)
    config.batch = 1
    config.heads = 32
    config.kv_heads = 8
    config.head_dims = (128, 64)  # 128 first: the targets are at D = 128
    config.dtype = "bfloat16"
    config.window = 4096
    config.impls = ("flash", "cudnn", "xla")
    config.repeats = 10
    # XLA's dense attention materialises heads x n^2 scores: above this length it is not run
    config.xla_max_length = 16384
    # correctness check before timing: small shapes, every mask feature flash takes on GPU
    config.check_length = 300
    config.check_heads = 8
    config.check_kv_heads = 2
    config.check_atol = 3e-2  # bfloat16 inputs vs a float32 oracle (forward)
    config.check_grad_atol = 6e-2
    return config
