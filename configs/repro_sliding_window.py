"""A dense model trained with sliding-window attention vs without (Mistral-style SWA; the
"window attention" baseline of Beltagy et al. 2020 / Xiao et al. 2023).

Claim: training with a window of W = L/2 costs a little perplexity at the training length L
but, because no query ever sees a relative distance beyond W, perplexity stays flat far past
L (RoPE positions, no scaling), whereas the same model trained with full causal attention
blows up past L. Launch:

  python -m experiments.train --config configs/repro_sliding_window.py --config.workdir=runs/repro/window
  python -m experiments.reproduce --claim=window

(the full-attention comparison is `configs/repro_alibi.py:rope`).
"""

import ml_collections

from configs.repro_alibi import TRAIN_LEN, base_config

VARIANTS = ("window",)


def get_config(variant: str = "window") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    config = base_config("rope")
    config.workdir = "runs/repro/window"
    config.model.attention.window = TRAIN_LEN // 2
    return config
