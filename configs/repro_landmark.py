"""Landmark attention (Mohtashami & Jaggi 2023): passkey retrieval beyond the training length.

A 2-layer NoPE decoder with a landmark after every `block_size` tokens, trained with the
grouped softmax on the token-level passkey task at `train_length`, evaluated by exact match
at 2x and 4x that length with the grouped softmax and with top-k block retrieval. Launch:

  python -m experiments.repro_passkey --config configs/repro_landmark.py --config.workdir=runs/repro_landmark

The paper's control, the same model trained and scored without landmarks (plain causal
softmax, same task, same steps):

  python -m experiments.repro_passkey --config configs/repro_landmark.py:full:no_landmark \
      --config.workdir=runs/repro_landmark_no_landmark

The claims (`CLAIMS`: landmark vs no landmarks at 2x and 4x, 3 seeds) are judged by

  python -m experiments.reproduce --claim=landmark   # trains or reuses runs/repro_passkey/landmark/

Reduced size for the shared CPU (`:small`, `:small:no_landmark`; the small landmark run took
59 s of training, 77 s in all, on an idle 2-core CPU):

  python -m experiments.repro_passkey --config configs/repro_landmark.py:small
"""

import ml_collections

PRESETS = ("full", "small")
SEEDS = (0, 1, 2)

# The claims `python -m experiments.reproduce --claim=landmark` judges (`eval/passkey_claims.py`):
# series are per-example passkey errors (1 - exact match) at k x the training length, "lower" =
# fewer failed retrievals than the control, the same decoder trained without landmarks.
CLAIMS = (
    {"name": "landmark",
     "source": "Mohtashami & Jaggi 2023",
     "claim": "A decoder trained with landmark tokens (grouped softmax) retrieves a passkey at 2x and "
              "4x its training length more often than the same decoder trained without landmarks.",
     "rules": (
         {"name": "grouped softmax vs no landmarks at 2L", "method": "landmark_grouped/passkey@2L",
          "control": "no_landmark/passkey@2L", "expect": "lower", "margin": 0.0},
         {"name": "grouped softmax vs no landmarks at 4L", "method": "landmark_grouped/passkey@4L",
          "control": "no_landmark/passkey@4L", "expect": "lower", "margin": 0.0},
     )},
    {"name": "landmark retrieval",
     "source": "Mohtashami & Jaggi 2023",
     "claim": "Top-k retrieval of landmark blocks retrieves a passkey at 4x the training length more "
              "often than the same decoder trained without landmarks.",
     "rules": (
         {"name": "top-k retrieval vs no landmarks at 4L", "method": "landmark_topk/passkey@4L",
          "control": "no_landmark/passkey@4L", "expect": "lower", "margin": 0.0},
     )},
)


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
    """`preset` is "full" or "small", optionally with ":no_landmark" (the control without landmarks)."""
    preset, _, control = preset.partition(":")
    if preset not in PRESETS or control not in ("", "no_landmark"):
        raise ValueError(f"unknown preset {preset + (':' + control if control else '')!r}; valid: "
                         f"{list(PRESETS)}, each optionally with ':no_landmark'")
    config = ml_collections.ConfigDict()
    config.method = "landmark"
    config.workdir = "runs/repro_landmark"
    config.seed = 0
    config.seeds = SEEDS  # the claims' seeds (`experiments.reproduce --claim=landmark`)
    config.claims = CLAIMS
    config.block_size = 50  # the paper's default
    config.top_k = 4
    config.num_keys = 16
    config.train_length = 510  # regular tokens; with landmarks inserted the model sees 520
    config.eval_lengths = (1020, 2040)
    config.batch_size = 32
    config.steps = 3000
    config.log_every = 100
    config.eval_examples = 256
    config.model = ml_collections.ConfigDict()
    config.model.vocab_size = 64  # 0-2 markers, 3 .. 3 + num_keys - 1 keys, filler, last id = landmark
    config.model.d_model = 128
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.num_kv_heads = 4
    config.model.mlp_dim = 256
    config.model.position = "none"
    config.optim = ml_collections.ConfigDict({"learning_rate": 3e-3, "warmup_steps": 50, "weight_decay": 0.0})
    if preset == "small":
        config.workdir = "runs/repro_landmark_small"
        config.block_size = 8
        config.top_k = 2
        config.num_keys = 8
        config.train_length = 61
        config.eval_lengths = (122, 244)  # 2x, 4x as in full; length + 1 not 0 or 1 mod block_size
        config.model.vocab_size = 24
        config.model.d_model = 64
        config.model.num_kv_heads = 2
        config.model.mlp_dim = 128
        config.steps = 600
        config.log_every = 50
        config.eval_examples = 128
    if control:
        config.method = "no_landmark"
        config.workdir += "_no_landmark"
    return config
