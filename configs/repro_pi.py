"""Position Interpolation (Chen et al. 2023, arXiv:2306.15595).

Claim: a RoPE model trained at L and fine-tuned with PI (linear rope_scaling, factor 4) at 4L
has lower perplexity at 4L than the paper's control, the same fine-tune without
interpolation, and than the base model extrapolating. Starts from the same seed's RoPE base of
configs/repro_alibi.py, fine-tunes at 4L with the base's tokens per step (claim size: 60 steps
at 1,024 tokens x 2 sequences, 0.12M tokens, ~1.4 TFLOP, ~12 s per run on an idle 2-core CPU at
~120 GFLOP/s; 3 seeds x 2 variants about 1.5 minutes), fresh optimizer, on training documents of
>= 4L tokens. `:smoke` (e.g. `:pi:smoke`) fine-tunes the tiny smoke base. Launch one run:

  python -m experiments.train --config configs/repro_pi.py:pi --config.workdir=runs/repro/pi/seed0 \
      --config.train.init_from=runs/repro/rope/seed0

or everything with evaluation (trains what is missing, writes runs/repro/pi.json):

  python -m experiments.reproduce --claim=pi
"""

import ml_collections

from configs.repro_alibi import TOKENS_PER_STEP, TRAIN_LEN, base_config, parse_variant

FACTOR = 4
VARIANTS = ("pi", "noscale")
FINETUNE_STEPS = {"claim": 60, "smoke": 60}

CLAIMS = (
    {"name": "pi",
     "source": "Chen et al. 2023",
     "claim": "Fine-tuning with Position Interpolation reaches lower perplexity at the extended length "
              "than fine-tuning without interpolation at the same budget, and than extrapolating.",
     "rules": (
         {"name": "PI fine-tune vs fine-tune without interpolation at 4L",
          "method": "pi_finetuned/full@4L", "control": "noscale_finetuned/full@4L", "expect": "lower",
          "margin": 0.0},
         {"name": "PI fine-tune vs the base extrapolating at 4L",
          "method": "pi_finetuned/full@4L", "control": "extrapolation/full@4L", "expect": "lower",
          "margin": 0.0},
     )},
)


def finetune_config(name: str, rope_scaling: dict | None, *, size: str = "claim", factor: int = FACTOR,
                    steps: int | None = None) -> ml_collections.ConfigDict:
    """Fine-tune the RoPE base of `size` at factor * L with `rope_scaling` (same tokens/step)."""
    config = base_config("rope", size=size)
    train_len = TRAIN_LEN[size]
    steps = FINETUNE_STEPS[size] if steps is None else steps
    root = "runs/repro" if size == "claim" else "runs/repro_smoke"
    config.workdir = f"{root}/{name}"
    config.train.init_from = f"{root}/rope"
    config.model.rope_scaling = rope_scaling
    config.data.seq_len = factor * train_len
    config.data.batch_size = TOKENS_PER_STEP[size] // (factor * train_len)
    config.data.eval_sequences = 16
    config.data.min_doc_tokens = factor * train_len
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 10
    config.train.steps = steps
    config.train.eval_every = steps
    config.train.checkpoint_every = min(50, steps)
    config.claims = ()
    return config


def get_config(variant: str = "pi") -> ml_collections.ConfigDict:
    name, size = parse_variant(variant, VARIANTS)
    scaling = {"rope_type": "linear", "factor": float(FACTOR)} if name == "pi" else None
    config = finetune_config(name, scaling, size=size)
    config.claims = CLAIMS
    return config
