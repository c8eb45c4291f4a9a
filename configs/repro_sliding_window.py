"""A dense model trained with sliding-window attention vs without (Mistral-style SWA; the
"window attention" baseline of Beltagy et al. 2020 / Xiao et al. 2023).

Claim: training with a window of W = L/2 keeps perplexity from degrading far past L (RoPE
positions, no scaling), whereas the same model trained with full causal attention (the
control, `configs/repro_alibi.py:rope`) degrades. Same size, steps and seeds as the RoPE base
(~25 s per seed at the claim size on an idle 2-core CPU). `:smoke` (`:window:smoke`) is
the tiny size. Launch:

  python -m experiments.train --config configs/repro_sliding_window.py --config.workdir=runs/repro/window/seed0
  python -m experiments.reproduce --claim=window
"""

import ml_collections

from configs.repro_alibi import TRAIN_LEN, base_config, parse_variant

VARIANTS = ("window",)

CLAIMS = (
    {"name": "window",
     "source": "Beltagy et al. 2020; Jiang et al. 2023 (Mistral)",
     "claim": "A model trained with sliding-window attention has lower perplexity far past L than the "
              "same model trained with full attention.",
     "rules": (
         {"name": "window-trained vs dense-trained at 8L, same tokens",
          "method": "window_trained/full@8L", "control": "dense_trained/full@8L", "expect": "lower",
          "margin": 0.0},
     )},
)


def get_config(variant: str = "window") -> ml_collections.ConfigDict:
    _, size = parse_variant(variant, VARIANTS)
    config = base_config("rope", size=size)
    config.workdir = config.workdir[: -len("rope")] + "window"
    config.model.attention.window = TRAIN_LEN[size] // 2
    config.claims = CLAIMS
    return config
