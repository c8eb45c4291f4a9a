"""A decode step's attention over 30 layers' KV caches: cpu_decode vs dense vs torch sdpa vs the read floor.

  python -m experiments.bench_decode_attention --config configs/bench_decode_attention.py --config.workdir=runs/bench_decode_attention

SmolLM2-135M's shapes (30 layers, 9 query / 3 KV heads x 64, float32). Cases (written tokens,
cache slots): a cache exactly full at 8K and 16K, and a 16K-slot cache holding 4K tokens (a
`Generator` sized for a long generation, early on). What is timed and how:
`longctx_jax/bench/decode_attention.py`. About a minute on a 2-core CPU.
"""

import ml_collections

from longctx_jax.bench.bandwidth import PAUSE_S


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.workdir = "runs/bench_decode_attention"
    config.layers = 30
    config.heads = 9
    config.kv_heads = 3
    config.head_dim = 64
    config.cases = ((8192, 8192), (16384, 16384), (4096, 16384))  # (written tokens, cache slots)
    config.impls = ("cpu_decode", "dense")
    config.torch_peer = True  # torch sdpa and the read floor (the `bench` extra)
    config.rounds = 15  # every reader once per round, in turn; medians reported
    config.pause_s = PAUSE_S  # idle seconds before each reader (threads left spinning by the last go idle)
    return config
