"""Attention benchmark: time and memory of dense vs blockwise vs cpu_flash vs jax.nn.dot_product_attention.

  python -m experiments.bench_attention --config configs/bench_attention.py --config.workdir=runs/bench_attention
  python -m experiments.bench_attention --config configs/bench_attention.py:quick

CPU section (always): lengths 1K..64K (variant "full") or 1K..4K (":quick", one repeat), batch 1, 8 heads,
head_dim 64, float32, causal, with torch's CPU sdpa as the peer when torch is installed. GPU section (only when a GPU backend is present): forward and
forward+backward TFLOP/s of flash vs cudnn vs xla, causal and sliding window, head_dim 64 /
128, bfloat16, 2K..32K.
"""

import ml_collections

VARIANTS = ("full", "quick")


def get_config(variant: str = "full") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    quick = variant == "quick"
    config = ml_collections.ConfigDict()
    config.workdir = "runs/bench_attention"
    config.preset = variant  # recorded in the results; choose it with configs/bench_attention.py:VARIANT
    config.lengths = (1024, 2048, 4096) if quick else (1024, 2048, 4096, 8192, 16384, 32768, 65536)
    config.cpu = ml_collections.ConfigDict()
    config.cpu.batch = 1
    config.cpu.heads = 8
    config.cpu.kv_heads = 8
    config.cpu.head_dim = 64
    config.cpu.dtype = "float32"
    config.cpu.causal = True
    config.cpu.window = ml_collections.config_dict.placeholder(int)  # e.g. 1024: sliding window
    config.cpu.impls = ("blockwise", "cpu_flash", "xla", "dense")
    config.cpu.torch_peer = True  # also time torch's fused CPU sdpa when torch is installed
    config.cpu.block_q = 512
    config.cpu.block_k = 512
    config.cpu.repeats = 1 if quick else 3
    config.cpu.long_from = 16384  # lengths from here on are timed once
    config.cpu.time_max_len = 65536  # longer lengths: compiled memory only, no timing
    # Implementations that materialise [B, N, T, S] float32 logits are skipped above this.
    config.cpu.max_quadratic_gib = 6.0
    config.gpu = ml_collections.ConfigDict()
    config.gpu.lengths = (2048, 4096, 8192, 16384, 32768)
    config.gpu.batch = 1
    config.gpu.heads = 16
    config.gpu.head_dims = (64, 128)
    config.gpu.dtype = "bfloat16"
    config.gpu.window = 1024
    config.gpu.impls = ("flash", "cudnn", "xla")
    config.gpu.repeats = 10
    return config
