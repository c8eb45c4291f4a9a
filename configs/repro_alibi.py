"""ALiBi vs RoPE vs NoPE length extrapolation (Press et al. 2022, "Train Short, Test Long").

Claim: a model trained at length L with ALiBi keeps its perplexity flat when evaluated up to
8L, while unscaled RoPE blows up past L (NoPE also degrades). Tiny byte models at L = 64 on
the stdlib corpus, evaluated at 64 .. 512. These three runs are also the base models of the
PI / YaRN / StreamingLLM reproductions (`runs/repro/rope`). Launch one run:

  python -m experiments.train --config configs/repro_alibi.py:alibi --config.workdir=runs/repro/alibi

or the whole reproduction (train all three, evaluate, write runs/repro/alibi.json):

  python -m experiments.reproduce --claim=alibi
"""

import ml_collections

from configs import tiny

TRAIN_LEN = 64
BATCH = 32  # tokens per step = BATCH * TRAIN_LEN in every reproduction run
VARIANTS = ("rope", "alibi", "nope")


def base_config(variant: str, *, steps: int = 600) -> ml_collections.ConfigDict:
    """The shared tiny model (2 layers, d=64) trained at TRAIN_LEN; variant picks the positions."""
    config = tiny.get_config(variant)
    config.workdir = f"runs/repro/{variant}"
    config.model.d_model = 64
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.mlp_dim = 192
    config.data.seq_len = TRAIN_LEN
    config.data.batch_size = BATCH
    config.data.eval_sequences = 64
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 30
    config.train.steps = steps
    config.train.log_every = 50
    config.train.eval_every = steps
    config.train.checkpoint_every = steps
    config.train.keep_checkpoints = 1
    config.train.init_from = ""
    config.train.curriculum = ()
    config.data.min_doc_tokens = 0
    config.eval = ml_collections.ConfigDict()
    config.eval.lengths = (TRAIN_LEN, 2 * TRAIN_LEN, 4 * TRAIN_LEN, 8 * TRAIN_LEN)
    config.eval.num_docs = 8
    config.eval.stride = TRAIN_LEN // 2  # strided protocol: window TRAIN_LEN, this stride
    return config


def get_config(variant: str = "alibi") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    return base_config(variant)
