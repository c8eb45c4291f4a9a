"""Progressive context extension (LongRoPE, Ding et al. 2024, arXiv:2402.13753, sec. 3.3):
extend to L1 = 2L with factor s1 = 2, then from that checkpoint to L2 = 4L with s2 = 4.

Expressed as two configs chained by `train.init_from` (not a stage list): each stage has its
own model config (its RoPE factor), and stage 2 starts from stage 1's parameters with a fresh
optimizer. Uses linear (PI) factors on the RoPE base of configs/repro_alibi.py; LongRoPE's
searched per-band factors would go in `rope_scaling` the same way. Each stage gets half the
fine-tune budget of configs/repro_pi.py, so the two together match it. Launch:

  python -m experiments.train --config configs/repro_progressive.py:stage1 --config.workdir=runs/repro/progressive1
  python -m experiments.train --config configs/repro_progressive.py:stage2 --config.workdir=runs/repro/progressive2
"""

import ml_collections

from configs.repro_alibi import BATCH, TRAIN_LEN
from configs.repro_pi import finetune_config

VARIANTS = ("stage1", "stage2")


def get_config(variant: str = "stage1") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    factor = 2 if variant == "stage1" else 4
    config = finetune_config(f"progressive{variant[-1]}", {"rope_type": "linear", "factor": float(factor)},
                             steps=30)
    config.data.seq_len = factor * TRAIN_LEN
    config.data.batch_size = BATCH // factor
    config.data.min_doc_tokens = factor * TRAIN_LEN
    if variant == "stage2":
        config.train.init_from = "runs/repro/progressive1"
    return config
