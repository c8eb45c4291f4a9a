"""StreamingLLM attention sinks (Xiao et al. 2023, arXiv:2309.17453).

Claim: decoding a stream much longer than the cache with a rolling KV cache of W tokens,
keeping the first 4 tokens ("sinks") keeps perplexity flat, while the same window without
sinks degrades. The model is the dense RoPE base of configs/repro_alibi.py (trained at 64);
the evaluation streams 1024 tokens (16x the cache of 64) through `Decoder.decode` with a
StreamingLLM cache (positions re-indexed inside the cache), sinks 4 vs 0. Launch:

  python -m experiments.train --config configs/repro_streaming.py --config.workdir=runs/repro/rope
  python -m experiments.reproduce --claim=streaming

(the training run is the same as `configs/repro_alibi.py:rope`).
"""

import ml_collections

from configs.repro_alibi import TRAIN_LEN, base_config

VARIANTS = ("sinks", "nosinks")


def get_config(variant: str = "sinks") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    config = base_config("rope")
    config.eval.cache_size = TRAIN_LEN
    config.eval.sinks = 4 if variant == "sinks" else 0
    config.eval.stream_len = 16 * TRAIN_LEN
    config.eval.num_docs = 4
    return config
