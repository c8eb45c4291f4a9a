"""Passkey retrieval beyond the training length: landmark attention or memory tokens (RMT).

  python -m experiments.repro_passkey --config configs/repro_landmark.py --config.workdir=runs/repro_landmark
  python -m experiments.repro_passkey --config configs/repro_memory_tokens.py \
      --config.workdir=runs/repro_memory_tokens

Trains the config's model (`config.method`: "landmark" or "memory_tokens") on the synthetic
token-level passkey task at `config.train_length`, then measures exact-match accuracy at every
`config.eval_lengths` (longer than the training length) for each evaluation variant (landmark:
grouped softmax and top-k retrieval; memory tokens: carried memory and the reset-memory
ablation, which has the same parameters). Writes `results.json` to the workdir.
"""

import json
import os
import time

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from longctx_jax import config_cli
from longctx_jax.models import landmark, memory_tokens
from longctx_jax.models.config import ModelConfig

_CONFIG = config_cli.define_config("configs/repro_landmark.py")


def build(config):
    cfg = ModelConfig.from_config(config.model)
    rngs = nnx.Rngs(config.seed)
    if config.method == "landmark":
        model = landmark.LandmarkDecoder(cfg, block_size=config.block_size, rngs=rngs)

        def batch(rng, size, length):
            return landmark.passkey_batch(
                rng,
                size,
                length,
                num_keys=config.num_keys,
                vocab_size=cfg.vocab_size,
                block_size=config.block_size,
            )

        variants = {
            "grouped_softmax": {"top_k": None},
            f"top{config.top_k}_retrieval": {"top_k": config.top_k},
        }
    elif config.method == "memory_tokens":
        model = memory_tokens.MemoryTokenDecoder(
            cfg,
            num_memory=config.num_memory,
            segment_len=config.segment_len,
            bptt_segments=config.bptt_segments,
            rngs=rngs,
        )

        def batch(rng, size, length):
            return memory_tokens.passkey_batch(
                rng,
                size,
                length,
                num_keys=config.num_keys,
                vocab_size=cfg.vocab_size,
                key_span=config.segment_len - 2,
            )

        variants = {"memory": {"carry_memory": True}, "reset_memory": {"carry_memory": False}}
    else:
        raise ValueError(f"unknown config.method {config.method!r}; valid: landmark, memory_tokens")
    return model, batch, variants


def main(config) -> None:
    logging.set_verbosity(logging.WARNING)
    os.makedirs(config.workdir, exist_ok=True)
    model, batch, variants = build(config)
    start = time.time()
    model, losses = memory_tokens.train_synthetic(
        model,
        lambda step: batch(
            np.random.default_rng([config.seed, step]), config.batch_size, config.train_length
        ),
        steps=config.steps,
        optim_cfg=config.optim,
        log_every=config.log_every,
    )
    train_seconds = time.time() - start
    call = nnx.jit(lambda m, x: m(x))
    accuracy = {}
    for name, attrs in variants.items():
        for attr, value in attrs.items():
            setattr(model, attr, value)
        for length in [config.train_length, *config.eval_lengths]:
            test = batch(np.random.default_rng([config.seed, 10**6, length]), config.eval_examples, length)
            accuracy.setdefault(name, {})[str(length)] = memory_tokens.exact_match(
                call(model, jnp.asarray(test["inputs"])), test
            )
    results = {
        "method": config.method,
        "train_length": config.train_length,
        "steps": config.steps,
        "final_train_loss": float(np.mean(losses[-config.log_every :])),
        "train_seconds": train_seconds,
        "chance": 1.0 / config.num_keys,
        "eval_examples": config.eval_examples,
        "exact_match": accuracy,
        "config": json.loads(config.to_json()),
    }
    with open(os.path.join(config.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({k: v for k, v in results.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
