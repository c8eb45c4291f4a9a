"""Progressive context extension (LongRoPE, Ding et al. 2024, arXiv:2402.13753, sec. 3.3):
extend to L1 = 2L with factor s1 = 2, then from that checkpoint to L2 = 4L with s2 = 4.

Expressed as two configs chained by `train.init_from` (not a stage list): each stage has its
own model config (its RoPE factor), and stage 2 starts from the same seed's stage 1 with a
fresh optimizer. Uses linear (PI) factors on the RoPE base of configs/repro_alibi.py. Each stage
gets half the fine-tune steps of configs/repro_pi.py at the same tokens per step, so the two
together match it (claim size: 2 x 30 steps, ~12 s for both stages per seed on an idle 2-core
CPU). `:smoke` (`:stage1:smoke`) uses the tiny base. Launch:

  python -m experiments.train --config configs/repro_progressive.py:stage1 --config.workdir=runs/repro/progressive1/seed0 \
      --config.train.init_from=runs/repro/rope/seed0
  python -m experiments.reproduce --claim=progressive
"""

import ml_collections

from configs.repro_alibi import parse_variant
from configs.repro_pi import FINETUNE_STEPS, finetune_config

VARIANTS = ("stage1", "stage2")

CLAIMS = (
    {"name": "progressive",
     "source": "Ding et al. 2024 (LongRoPE, sec. 3.3)",
     "claim": "Extending in two stages (2L, then 4L) is at least as good at 4L as one stage at the same budget.",
     "rules": (
         {"name": "progressive (2L then 4L) vs one-shot PI at 4L, non-inferiority margin 0.01 nats",
          "method": "stage2/full@4L", "control": "pi/full@4L", "expect": "not_higher", "margin": 0.01},
     )},
)


def get_config(variant: str = "stage1") -> ml_collections.ConfigDict:
    name, size = parse_variant(variant, VARIANTS)
    factor = 2 if name == "stage1" else 4
    config = finetune_config(f"progressive{name[-1]}", {"rope_type": "linear", "factor": float(factor)},
                             size=size, factor=factor, steps=FINETUNE_STEPS[size] // 2)
    if name == "stage2":
        config.train.init_from = config.workdir[: -len("progressive2")] + "progressive1"
    config.claims = CLAIMS
    return config
