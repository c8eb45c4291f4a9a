"""StreamingLLM attention sinks (Xiao et al. 2023, arXiv:2309.17453).

Claim: decoding a stream much longer than the cache with a rolling KV cache of W tokens that
keeps the first 4 tokens ("sinks") gives lower perplexity than the paper's control, the same
rolling window without sinks. The model is the dense RoPE base of configs/repro_alibi.py
(trained at L, each seed); the evaluation streams 16L tokens through `Decoder.decode` with a
StreamingLLM cache of L (positions re-indexed inside the cache), sinks 4 vs 0. At the claim
size (L = 256, 4,096-token streams, 16 held-out documents of >= 4,097 tokens) that is 65,536
decoded tokens per seed and variant, ~1.5 MFLOP each, a few seconds of arithmetic but
token-by-token (minutes on a CPU). `:smoke` (`:sinks:smoke`) is the tiny size. Launch:

  python -m experiments.reproduce --claim=streaming

(the training runs are `configs/repro_alibi.py:rope`; `python -m experiments.train --config
configs/repro_streaming.py` trains the same model.)
"""

import ml_collections

from configs.repro_alibi import TRAIN_LEN, base_config, parse_variant

VARIANTS = ("sinks", "nosinks")

CLAIMS = (
    {"name": "streaming",
     "source": "Xiao et al. 2023",
     "claim": "With 4 attention-sink tokens kept in a rolling KV cache, streaming perplexity is lower than "
              "with the same window without sinks.",
     "rules": (
         {"name": "window + 4 sinks vs window without sinks, stream of 16L",
          "method": "sinks/stream@16L", "control": "nosinks/stream@16L", "expect": "lower", "margin": 0.0},
     )},
)


def get_config(variant: str = "sinks") -> ml_collections.ConfigDict:
    name, size = parse_variant(variant, VARIANTS)
    config = base_config("rope", size=size)
    train_len = TRAIN_LEN[size]
    config.eval.cache_size = train_len
    config.eval.sinks = 4 if name == "sinks" else 0
    config.eval.stream_len = 16 * train_len
    config.eval.num_docs = 16 if size == "claim" else 4
    config.claims = CLAIMS
    return config
