"""Passkey retrieval beyond the training length: landmark attention or memory tokens (RMT).

  python -m experiments.repro_passkey --config configs/repro_landmark.py --config.workdir=runs/repro_landmark
  python -m experiments.repro_passkey --config configs/repro_memory_tokens.py \
      --config.workdir=runs/repro_memory_tokens

Trains the config's model (`config.method`: "landmark" or "memory_tokens") on the synthetic
token-level passkey task at `config.train_length`, then measures exact-match accuracy at every
`config.eval_lengths` (longer than the training length) for each evaluation variant (landmark:
grouped softmax and top-k retrieval; memory tokens: carried memory and the reset-memory
ablation, which has the same parameters) (`longctx_jax.train.synthetic.passkey_retrieval`).
Writes `results.json` to the workdir. The claims over 3 seeds with their controls and verdicts:
`python -m experiments.reproduce --claim=landmark` (or `--claim=memory_tokens`).
"""

import json
import os

from absl import logging

from longctx_jax import config_cli
from longctx_jax.atomic import write_atomically
from longctx_jax.train.synthetic import passkey_retrieval

_CONFIG = config_cli.define_config("configs/repro_landmark.py")


def main(config) -> None:
    logging.set_verbosity(logging.WARNING)
    os.makedirs(config.workdir, exist_ok=True)
    results = passkey_retrieval(config)
    write_atomically(os.path.join(config.workdir, "results.json"), json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
