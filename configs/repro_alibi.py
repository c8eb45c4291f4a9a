"""ALiBi vs RoPE vs NoPE past the training length (Press et al. 2022, "Train Short, Test Long";
Kazemnejad et al. 2023, "The Impact of Positional Encoding on Length Generalization in Transformers").

Also the base models of every decoder reproduction (`configs/repro_pi.py`, `repro_yarn.py`,
`repro_streaming.py`, `repro_progressive.py` start from or evaluate the `rope` run).

Claim model (variants `rope`, `alibi`, `nope`): byte-level decoder, 4 layers, d_model 128,
2 heads of head_dim 64, SwiGLU 384 (about 0.89M parameters), trained at L = 256 tokens,
8 sequences per step (2,048 tokens), 200 steps (0.41M tokens), seeds 0, 1, 2; evaluated on
held-out windows of single documents at L, 2L, 4L, 8L = 2,048 (32 windows, 65,536 target
tokens at 8L). With head_dim 64 and L = 256, YaRN's ramp (alpha 1, beta 32 rotations over L)
splits the 32 RoPE bands (wavelength 2 pi 10000^(d/32)) into 1 kept (wavelength < L/32), 12
ramped and 19 interpolated (wavelength > L), so YaRN is not PI plus a temperature.

Cost, counted (6 x parameters + 12 x layers x seq_len x d_model FLOPs per trained token):
about 7.0 MFLOP/token, 2.9 TFLOP per 200-step base run, about 25 s each on an idle 2-core CPU
at ~120 GFLOP/s; the 9 base runs (3 variants x 3 seeds) about 4 minutes; their evaluation
(about 4 MFLOP per target token at 8L; 32 windows at L and 8L plus the chunked protocol,
~0.5 TFLOP per model) about 10 s per model; the fine-tunes of repro_pi / repro_yarn /
repro_progressive (0.12M tokens each at 1,024, ~1.4 TFLOP) about 12 s each, 12 of them 2.5
minutes; the sliding-window runs 3 x 25 s; the streams a few minutes. The whole set of decoder
claims is about 15 minutes of an idle CPU at that rate. Measured on this shared CPU at nice 19
beside a fine-tuning run: 397 s for the first base run (rope, seed 0: 1.1-2 s per step), and
10-12 s per step when four jobs shared the two cores.

`:smoke` (e.g. `configs/repro_alibi.py:rope:smoke`) is the old tiny size (2 layers, d_model 64,
head_dim 16, L = 64, 600 steps, one seed) for tests and quick checks of the machinery; its
numbers decide nothing. Launch one run:

  python -m experiments.train --config configs/repro_alibi.py:alibi --config.workdir=runs/repro/alibi/seed0

or the whole claim (trains the missing runs, evaluates, writes runs/repro/alibi.json):

  python -m experiments.reproduce --claim=alibi
"""

import ml_collections

from configs import tiny

VARIANTS = ("rope", "alibi", "nope")
SIZES = ("claim", "smoke")
TRAIN_LEN = {"claim": 256, "smoke": 64}
TOKENS_PER_STEP = {"claim": 2048, "smoke": 2048}
SEEDS = {"claim": (0, 1, 2), "smoke": (0,)}
MODEL = {  # head_dim 64 at the claim size (YaRN's ramp is not degenerate); the old tiny model for smoke
    "claim": {"d_model": 128, "num_layers": 4, "num_heads": 2, "num_kv_heads": 2, "mlp_dim": 384},
    "smoke": {"d_model": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "mlp_dim": 192},
}
STEPS = {"claim": 200, "smoke": 600}

# The claims this config's runs decide, as the papers state them, and the rule (fixed before the
# run) that decides each comparison: `longctx_jax.eval.verdicts`. Series are
# "<variant>/<protocol>@<length>": `full` scores targets 1..N of one forward of N tokens,
# `chunked` scores the same targets restarting the context every L tokens (never beyond L).
CLAIMS = (
    {"name": "alibi",
     "source": "Press et al. 2022",
     "claim": "A model trained at L with ALiBi does not get worse on inputs longer than L (here 8L), "
              "while a rotary (RoPE) model does.",
     "rules": (
         {"name": "ALiBi: full 8L context vs the same tokens with context capped at L",
          "method": "alibi/full@8L", "control": "alibi/chunked@8L", "expect": "not_higher", "margin": 0.01},
         {"name": "RoPE: full 8L context vs the same tokens with context capped at L",
          "method": "rope/full@8L", "control": "rope/chunked@8L", "expect": "higher", "margin": 0.0},
         {"name": "ALiBi vs RoPE at 8L, same tokens",
          "method": "alibi/full@8L", "control": "rope/full@8L", "expect": "lower", "margin": 0.0},
     )},
    {"name": "nope",
     "source": "Kazemnejad et al. 2023",
     "claim": "A decoder without positional encoding (NoPE) length-generalises better than RoPE: "
              "lower perplexity beyond the training length.",
     "rules": (
         {"name": "NoPE vs RoPE at 8L, same tokens",
          "method": "nope/full@8L", "control": "rope/full@8L", "expect": "lower", "margin": 0.0},
     )},
)


def parse_variant(variant: str, valid: tuple[str, ...]) -> tuple[str, str]:
    """"NAME" or "NAME:smoke" -> (NAME, size); raises ValueError for anything else."""
    name, _, size = variant.partition(":")
    size = size or "claim"
    if name not in valid or size not in SIZES:
        raise ValueError(f"unknown variant {variant!r}; valid: {list(valid)}, each optionally with "
                         f"':smoke' (sizes {SIZES})")
    return name, size


def base_config(variant: str, *, size: str = "claim") -> ml_collections.ConfigDict:
    """The shared decoder of `size` trained at TRAIN_LEN[size]; variant picks the positions."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid: {SIZES}")
    train_len = TRAIN_LEN[size]
    config = tiny.get_config(variant)
    config.size = size
    config.seeds = SEEDS[size]  # every claim trains and evaluates each run once per seed
    config.workdir = f"runs/repro/{variant}" if size == "claim" else f"runs/repro_smoke/{variant}"
    config.model.update(MODEL[size])
    steps = STEPS[size]
    config.data.seq_len = train_len
    config.data.batch_size = TOKENS_PER_STEP[size] // train_len
    config.data.eval_sequences = 64
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 30
    config.train.steps = steps
    config.train.log_every = 50
    config.train.eval_every = steps
    config.train.checkpoint_every = 100
    config.train.keep_checkpoints = 1
    config.train.init_from = ""
    config.train.curriculum = ()
    config.data.min_doc_tokens = 0
    config.eval = ml_collections.ConfigDict()
    config.eval.lengths = (train_len, 2 * train_len, 4 * train_len, 8 * train_len)
    config.eval.num_windows = 32 if size == "claim" else 8  # held-out single-document windows
    config.eval.block = 64  # targets per bootstrap block (eval/intervals.py)
    config.eval.stride = train_len // 2  # strided protocol: window TRAIN_LEN, this stride
    config.claims = CLAIMS
    return config


def get_config(variant: str = "alibi") -> ml_collections.ConfigDict:
    name, size = parse_variant(variant, VARIANTS)
    return base_config(name, size=size)
