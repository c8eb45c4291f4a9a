"""YaRN (Peng et al. 2023, arXiv:2309.00071) against Position Interpolation.

Claims: (1) at an equal fine-tune budget, YaRN reaches lower perplexity at the extended length
than PI (the direction of the paper's Table 1); (2) without fine-tuning, YaRN and Dynamic NTK
applied to the base model beat PI at 4L. Fine-tunes the same seed's RoPE base of
configs/repro_alibi.py exactly like configs/repro_pi.py (same steps, data, tokens per step;
~12 s per run at the claim size on an idle 2-core CPU, 3 seeds about 40 s) with
`rope_type="yarn"`, factor 4, original length L. `:smoke` (`:yarn:smoke`) uses the tiny base.
Launch one run:

  python -m experiments.train --config configs/repro_yarn.py --config.workdir=runs/repro/yarn/seed0 \
      --config.train.init_from=runs/repro/rope/seed0

or everything with evaluation (writes runs/repro/yarn.json; trains the PI runs it needs):

  python -m experiments.reproduce --claim=yarn
"""

import ml_collections

from configs.repro_alibi import TRAIN_LEN, parse_variant
from configs.repro_pi import FACTOR, finetune_config

VARIANTS = ("yarn",)

CLAIMS = (
    {"name": "yarn_finetuned",
     "source": "Peng et al. 2023 (Table 1 direction)",
     "claim": "At the same fine-tuning budget, YaRN reaches lower perplexity at the extended length than PI.",
     "rules": (
         {"name": "YaRN fine-tune vs PI fine-tune at 4L",
          "method": "yarn_finetuned/full@4L", "control": "pi_finetuned/full@4L", "expect": "lower",
          "margin": 0.0},
     )},
    {"name": "yarn_no_finetune",
     "source": "Peng et al. 2023",
     "claim": "Without fine-tuning, YaRN and Dynamic NTK extend a RoPE model with lower perplexity than PI.",
     "rules": (
         {"name": "YaRN vs PI, no fine-tuning, at 4L",
          "method": "yarn_no_finetune/full@4L", "control": "linear_no_finetune/full@4L", "expect": "lower",
          "margin": 0.0},
         {"name": "Dynamic NTK vs PI, no fine-tuning, at 4L",
          "method": "dynamic_no_finetune/full@4L", "control": "linear_no_finetune/full@4L",
          "expect": "lower", "margin": 0.0},
     )},
)


def scaling(rope_type: str, size: str = "claim") -> dict:
    """The rope_scaling dict of `rope_type` extending TRAIN_LEN[size] by FACTOR."""
    if rope_type == "linear":
        return {"rope_type": "linear", "factor": float(FACTOR)}
    return {"rope_type": rope_type, "factor": float(FACTOR), "original_max_position_embeddings": TRAIN_LEN[size]}


def get_config(variant: str = "yarn") -> ml_collections.ConfigDict:
    name, size = parse_variant(variant, VARIANTS)
    config = finetune_config(name, scaling(name, size), size=size)
    config.claims = CLAIMS
    return config
