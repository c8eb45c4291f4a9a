"""The synthetic token-level passkey task (memory tokens, landmark attention) and its metric.

A sequence of random filler holds, early on, KEY_MARK followed by the passkey ids, and ends
with QUERY_MARK followed by the passkey again; the loss (and exact match) counts only the
answer. Used by `longctx_jax.train.synthetic` (configs/repro_memory_tokens.py,
configs/repro_landmark.py, the latter with landmarks inserted by
`longctx_jax.models.landmark.landmark_passkey_batch`).
"""

import numpy as np

from longctx_jax.typing import ArrayLike

# Token ids of the synthetic passkey task (the vocabulary must hold FIRST_KEY + num_keys + filler).
PAD, KEY_MARK, QUERY_MARK, FIRST_KEY = 0, 1, 2, 3


def passkey_batch(
    rng: np.random.Generator,
    batch: int,
    length: int,
    *,
    num_keys: int,
    vocab_size: int,
    key_span: int,
    key_len: int = 1,
) -> dict[str, np.ndarray]:
    """Synthetic passkey retrieval, token level.

    Each sequence of `length + 1` tokens is random filler (ids >= FIRST_KEY + num_keys), a
    KEY_MARK followed by `key_len` passkey ids (from FIRST_KEY .. FIRST_KEY + num_keys - 1)
    somewhere in the first `key_span` positions, and at the end QUERY_MARK followed by the
    passkey again. Returns the batch dict of `longctx_jax.train.step` (inputs, targets,
    positions, segment_ids, loss_mask; each `[batch, length]`) with loss_mask 1 only on the
    answer tokens.

    Args:
      rng: the generator (seed it per step for reproducible batches).
      batch: sequences.
      length: tokens per sequence (inputs; targets are shifted by one).
      num_keys: distinct passkey ids (chance accuracy is num_keys ** -key_len).
      vocab_size: ids are < vocab_size; those >= FIRST_KEY + num_keys are filler.
      key_span: the key mark is at one of the first `key_span` positions.
      key_len: passkey tokens.
    """
    if min(batch, length, num_keys, key_span, key_len) <= 0:
        raise ValueError(f"batch, length, num_keys, key_span and key_len must be positive, got {batch}, "
                         f"{length}, {num_keys}, {key_span}, {key_len}")
    first_filler = FIRST_KEY + num_keys
    if first_filler >= vocab_size:
        raise ValueError(f"vocab_size {vocab_size} leaves no filler ids above {first_filler - 1}")
    if key_span + key_len + 1 > length - key_len - 1:
        raise ValueError(f"key_span {key_span} does not leave room before the query in length {length}")
    seq = rng.integers(first_filler, vocab_size, (batch, length + 1))
    keys = rng.integers(FIRST_KEY, first_filler, (batch, key_len))
    starts = rng.integers(0, key_span, batch)
    mask = np.zeros((batch, length), np.float32)
    for b in range(batch):
        s = starts[b]
        seq[b, s] = KEY_MARK
        seq[b, s + 1 : s + 1 + key_len] = keys[b]
        seq[b, length - key_len] = QUERY_MARK
        seq[b, length - key_len + 1 :] = keys[b]
        mask[b, length - key_len :] = 1.0
    return {
        "inputs": seq[:, :-1].astype(np.int32),
        "targets": seq[:, 1:].astype(np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
        "segment_ids": np.ones((batch, length), np.int32),
        "loss_mask": mask,
    }


def exact_match_hits(logits_BLV: ArrayLike, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Per sequence `[B]` bool: every answer token (loss_mask 1) is the argmax prediction."""
    hit = (np.argmax(np.asarray(logits_BLV), axis=-1) == batch["targets"]) | (batch["loss_mask"] == 0)
    return np.all(hit, axis=-1)


def exact_match(logits_BLV: ArrayLike, batch: dict[str, np.ndarray]) -> float:
    """Fraction of sequences whose every answer token (loss_mask 1) is the argmax prediction."""
    return float(np.mean(exact_match_hits(logits_BLV, batch)))
