"""YaRN (Peng et al. 2023, arXiv:2309.00071) against Position Interpolation.

Claims: (1) at an equal fine-tune budget, YaRN's perplexity at 4L is <= PI's; (2) without
any fine-tuning, YaRN and dynamic NTK applied to the base model beat PI at 4L. Fine-tunes
the RoPE base of configs/repro_alibi.py exactly like configs/repro_pi.py (same steps, data,
tokens per step) with `rope_type="yarn"`, factor 4, original length 64. Launch:

  python -m experiments.train --config configs/repro_yarn.py --config.workdir=runs/repro/yarn

or everything with evaluation (writes runs/repro/yarn.json; needs the PI run):

  python -m experiments.reproduce --claim=yarn
"""

import ml_collections

from configs.repro_alibi import TRAIN_LEN
from configs.repro_pi import FACTOR, finetune_config

VARIANTS = ("yarn",)


def scaling(rope_type: str) -> dict:
    """The rope_scaling dict of `rope_type` extending TRAIN_LEN by FACTOR."""
    if rope_type == "linear":
        return {"rope_type": "linear", "factor": float(FACTOR)}
    return {"rope_type": rope_type, "factor": float(FACTOR), "original_max_position_embeddings": TRAIN_LEN}


def get_config(variant: str = "yarn") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    return finetune_config("yarn", scaling("yarn"))
