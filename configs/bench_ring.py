"""Ring attention scaling on fake CPU devices: per-device compiled memory and causal balance.

  python -m experiments.bench_ring --config configs/bench_ring.py --config.workdir=runs/bench_ring
  python -m experiments.bench_ring --config configs/bench_ring.py:quick --config.workdir=runs/bench_ring_quick

For each sequence length, compiles (does not run) one forward + backward of
`ring_attention` over `num_devices` host devices and records XLA's per-device memory
analysis, and counts per-device causal work for the contiguous and zig-zag layouts.
"""

import ml_collections

SEQ_LENS = {"full": (8192, 16384, 32768, 65536, 131072), "quick": (8192, 16384, 32768)}


def get_config(variant: str = "full") -> ml_collections.ConfigDict:
    if variant not in SEQ_LENS:
        raise ValueError(f"unknown variant {variant!r}; valid: {tuple(SEQ_LENS)}")
    config = ml_collections.ConfigDict()
    config.workdir = "runs/bench_ring"
    config.num_devices = 8
    config.seq_lens = SEQ_LENS[variant]
    config.batch = 1
    config.num_heads = 8
    config.num_kv_heads = 2
    config.head_dim = 64
    config.dtype = "bfloat16"
    config.block_size = 512
    config.context_parallel = ("ring", "all_gather")
    config.window = ml_collections.config_dict.placeholder(int)
    return config
