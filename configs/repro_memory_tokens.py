"""Memory tokens / RMT (Bulatov et al. 2022): passkey retrieval beyond the segment length.

A decoder with `num_memory` memory tokens reads sequences in segments of `segment_len`; the
passkey sits in the first segment and is asked for at the end of the last one, so only the
recurrent memory can carry it. Trained at `train_length`, evaluated by exact match there and
at longer lengths (more segments than seen in training), against the same model with its
memory reset every segment. Launch:

  python -m experiments.repro_passkey --config configs/repro_memory_tokens.py \
      --config.workdir=runs/repro_memory_tokens

The claim (`CLAIMS`: carried vs reset memory at 2x and 4x, 3 seeds) is judged by

  python -m experiments.reproduce --claim=memory_tokens   # trains or reuses runs/repro_passkey/memory_tokens/

Reduced size for the shared CPU (measured on an idle 2-core CPU: 11 s of training, 34 s in all;
docs/reproductions.md):

  python -m experiments.repro_passkey --config configs/repro_memory_tokens.py:small
"""

import ml_collections

SEEDS = (0, 1, 2)

# The claim `python -m experiments.reproduce --claim=memory_tokens` judges (`eval/passkey_claims.py`):
# per-example passkey errors at k x the training length; the control is the same weights with the
# memory reset every segment (so nothing can carry the passkey out of the first segment).
CLAIMS = (
    {"name": "memory tokens",
     "source": "Bulatov et al. 2022",
     "claim": "Memory tokens carried across segments retrieve a passkey from the first segment at 2x "
              "and 4x the trained number of segments more often than the same weights with the memory "
              "reset every segment.",
     "rules": (
         {"name": "carried vs reset memory at 2L", "method": "memory/passkey@2L",
          "control": "reset_memory/passkey@2L", "expect": "lower", "margin": 0.0},
         {"name": "carried vs reset memory at 4L", "method": "memory/passkey@4L",
          "control": "reset_memory/passkey@4L", "expect": "lower", "margin": 0.0},
     )},
)


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "memory_tokens"
    config.workdir = "runs/repro_memory_tokens"
    config.seed = 0
    config.seeds = SEEDS  # the claim's seeds (`experiments.reproduce --claim=memory_tokens`)
    config.claims = CLAIMS
    config.num_memory = 10
    config.segment_len = 128
    config.bptt_segments = ml_collections.config_dict.placeholder(int)  # None: through every segment
    config.num_keys = 16
    config.train_length = 512  # 4 segments
    config.eval_lengths = (1024, 2048)
    config.batch_size = 32
    config.steps = 3000
    config.log_every = 100
    config.eval_examples = 256
    config.model = ml_collections.ConfigDict()
    config.model.vocab_size = 64
    config.model.d_model = 128
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.num_kv_heads = 4
    config.model.mlp_dim = 256
    config.optim = ml_collections.ConfigDict({"learning_rate": 3e-3, "warmup_steps": 50, "weight_decay": 0.0})
    if preset == "small":
        config.workdir = "runs/repro_memory_tokens_small"
        config.num_memory = 4
        config.segment_len = 8
        config.num_keys = 4
        config.train_length = 16
        config.eval_lengths = (32, 64)
        config.model.vocab_size = 24
        config.model.d_model = 64
        config.model.num_kv_heads = 2
        config.model.mlp_dim = 128
        config.steps = 300
        config.log_every = 50
        config.eval_examples = 256
    elif preset != "full":
        raise ValueError(f"unknown preset {preset!r}; valid: full, small")
    return config
