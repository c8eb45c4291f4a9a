"""Training on synthetic tasks: the passkey reproductions of memory tokens and landmark attention.

`train_synthetic(model, batch_fn, ...)` trains any decoder-like module on generated batches
with the optimizer and jitted step of ordinary training. `passkey_retrieval(config)` is the
whole experiment of configs/repro_memory_tokens.py and configs/repro_landmark.py
(`experiments/repro_passkey.py`): build the config's model (`config.method`: "landmark",
"no_landmark" -- landmark attention's control, the same decoder on the same task without
landmark tokens, plain causal attention -- or "memory_tokens"), train it on the token-level
passkey task at `config.train_length`, then measure exact match at the training length and
every `config.eval_lengths` for each evaluation variant (landmark: grouped softmax and top-k
retrieval; no_landmark: causal softmax; memory tokens: carried memory and the reset-memory
ablation, which has the same parameters).
"""

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from longctx_jax.data.synthetic_passkey import exact_match_hits, passkey_batch
from longctx_jax.models import landmark, memory_tokens
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.provenance import provenance
from longctx_jax.train.optimizer import make_optimizer
from longctx_jax.train.step import init_train_state, make_train_step

BatchFn = Callable[[np.random.Generator, int, int], dict[str, np.ndarray]]
METHODS = ("landmark", "no_landmark", "memory_tokens")


def train_synthetic(
    model: nnx.Module,
    batch_fn: Callable[[int], dict[str, np.ndarray]],
    *,
    steps: int,
    optim_cfg: Mapping[str, Any],
    log_every: int = 0,
    log=print,
) -> tuple[nnx.Module, list[float]]:
    """Trains any decoder-like model (`model(inputs) -> logits`) on `batch_fn(step)` batches.

    Reuses `train.step.make_train_step` (masked next-token loss, jitted, state donated) and
    `train.optimizer.make_optimizer` (AdamW, warmup + cosine, clipping).

    Args:
      model: an NNX module called as `model(inputs_BL) -> logits_BLV`.
      batch_fn: the batch of a step (`inputs`, `targets`, `positions`, `segment_ids`,
        `loss_mask`, each `[B, L]`).
      steps: optimizer steps.
      optim_cfg: `make_optimizer` fields (learning_rate, warmup_steps, weight_decay, ...).
      log_every: log the mean loss every this many steps (0: never).
      log: where log lines go.

    Returns:
      the trained model and the training loss of every step.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    graphdef, params = nnx.split(model)
    tx = make_optimizer(optim_cfg, steps)
    step_fn = make_train_step(graphdef, tx, use_segment_ids=False)
    state = init_train_state(params, tx)
    losses = []
    for step in range(steps):
        state, metrics = step_fn(state, batch_fn(step))
        losses.append(float(metrics["train_loss"]))
        if log_every and (step + 1) % log_every == 0:
            log(f"step {step + 1}: loss {np.mean(losses[-log_every:]):.4f}")
    return nnx.merge(graphdef, state.params), losses


def passkey_setup(config: ml_collections.ConfigDict) -> tuple[nnx.Module, BatchFn, dict[str, dict[str, Any]]]:
    """The model, batch generator `(rng, size, length) -> batch` and evaluation variants of `config`.

    Variants map a name to the model attributes set before evaluating it (e.g. `top_k`).
    """
    if config.method not in METHODS:
        raise ValueError(f"unknown config.method {config.method!r}; valid: {', '.join(METHODS)}")
    cfg = ModelConfig.from_config(config.model)
    rngs = nnx.Rngs(config.seed)
    if config.method == "landmark":
        model = landmark.LandmarkDecoder(cfg, block_size=config.block_size, rngs=rngs)

        def batch(rng, size, length):
            return landmark.landmark_passkey_batch(rng, size, length, num_keys=config.num_keys,
                                                   vocab_size=cfg.vocab_size, block_size=config.block_size)

        variants = {"grouped_softmax": {"top_k": None},
                    f"top{config.top_k}_retrieval": {"top_k": config.top_k}}
    elif config.method == "no_landmark":
        # Landmark attention's control: the same decoder and task (same keys, filler and key span,
        # the vocabulary's landmark id never used), trained and scored with plain causal attention.
        model = Decoder(cfg, rngs=rngs)

        def batch(rng, size, length):
            return passkey_batch(rng, size, length, num_keys=config.num_keys, vocab_size=cfg.vocab_size - 1,
                                 key_span=length - 5)

        variants = {"causal_softmax": {}}
    else:
        model = memory_tokens.MemoryTokenDecoder(cfg, num_memory=config.num_memory,
                                                 segment_len=config.segment_len,
                                                 bptt_segments=config.bptt_segments, rngs=rngs)

        def batch(rng, size, length):
            return passkey_batch(rng, size, length, num_keys=config.num_keys, vocab_size=cfg.vocab_size,
                                 key_span=config.segment_len - 2)

        variants = {"memory": {"carry_memory": True}, "reset_memory": {"carry_memory": False}}
    return model, batch, variants


def passkey_retrieval(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Trains `config`'s model on the passkey task and measures exact match past the training length.

    Returns:
      a JSON-able dict: method, train_length, steps, final_train_loss, train_seconds, chance,
      eval_examples, exact_match {variant: {str(length): accuracy}}, hits {variant: {str(length):
      [1 if the example's passkey was retrieved exactly else 0, per example]}}, the device, the JAX
      version, `provenance()` (time, git commit) and the config.
    """
    model, batch, variants = passkey_setup(config)
    start = time.time()
    def train_batch(step: int) -> dict[str, np.ndarray]:
        return batch(np.random.default_rng([config.seed, step]), config.batch_size, config.train_length)

    model, losses = train_synthetic(
        model,
        train_batch,
        steps=config.steps,
        optim_cfg=config.optim,
        log_every=config.log_every,
    )
    train_seconds = time.time() - start
    call = nnx.jit(lambda m, x: m(x))
    accuracy: dict[str, dict[str, float]] = {}
    hits: dict[str, dict[str, list[int]]] = {}
    for name, attrs in variants.items():
        for attr, value in attrs.items():
            setattr(model, attr, value)
        for length in [config.train_length, *config.eval_lengths]:
            test = batch(np.random.default_rng([config.seed, 10**6, length]), config.eval_examples, length)
            hit = exact_match_hits(call(model, jnp.asarray(test["inputs"])), test)
            hits.setdefault(name, {})[str(length)] = [int(h) for h in hit]
            accuracy.setdefault(name, {})[str(length)] = float(np.mean(hit))
    return {
        "method": config.method,
        "train_length": config.train_length,
        "steps": config.steps,
        "final_train_loss": float(np.mean(losses[-config.log_every :])),
        "train_seconds": train_seconds,
        "chance": 1.0 / config.num_keys,
        "eval_examples": config.eval_examples,
        "exact_match": accuracy,
        "hits": hits,
        "device": jax.devices()[0].device_kind,
        "jax_version": jax.__version__,
        **provenance(),
        "config": json.loads(config.to_json()),
    }
