"""Position Interpolation (Chen et al. 2023, arXiv:2306.15595).

Claim: a RoPE model trained at L, fine-tuned briefly with PI (linear rope_scaling, factor 4)
at 4L, has lower perplexity at 4L than (a) the base model extrapolating directly and (b) the
same-budget fine-tune at 4L without interpolation. Starts from the RoPE base of
configs/repro_alibi.py (train it first), fine-tunes 60 steps at 256 tokens with the same
tokens per step, fresh optimizer, on documents of >= 256 tokens. Launch:

  python -m experiments.train --config configs/repro_alibi.py:rope --config.workdir=runs/repro/rope
  python -m experiments.train --config configs/repro_pi.py:pi --config.workdir=runs/repro/pi
  python -m experiments.train --config configs/repro_pi.py:noscale --config.workdir=runs/repro/noscale

or everything with evaluation (writes runs/repro/pi.json):

  python -m experiments.reproduce --claim=pi
"""

import ml_collections

from configs.repro_alibi import BATCH, TRAIN_LEN, base_config

FACTOR = 4
VARIANTS = ("pi", "noscale")


def finetune_config(name: str, rope_scaling: dict | None, *, steps: int = 60) -> ml_collections.ConfigDict:
    """Fine-tune the RoPE base at FACTOR * TRAIN_LEN with `rope_scaling` (same tokens/step)."""
    config = base_config("rope", steps=steps)
    config.workdir = f"runs/repro/{name}"
    config.train.init_from = "runs/repro/rope"
    config.model.rope_scaling = rope_scaling
    config.data.seq_len = FACTOR * TRAIN_LEN
    config.data.batch_size = BATCH // FACTOR
    config.data.eval_sequences = 16
    config.data.min_doc_tokens = FACTOR * TRAIN_LEN
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 10
    return config


def get_config(variant: str = "pi") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    scaling = {"rope_type": "linear", "factor": float(FACTOR)} if variant == "pi" else None
    return finetune_config(variant, scaling)
