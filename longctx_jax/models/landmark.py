"""Landmark attention as a model option (Mohtashami & Jaggi 2023, arXiv:2305.16300).

A landmark token (its own id, `landmark_id`, default the last vocabulary entry) follows every
`block_size` tokens (default 50). Training uses the grouped softmax: a query attends with one
softmax to its own block and to the landmarks of earlier blocks, and each earlier landmark's
probability gates a softmax over its block's tokens,

    weight(i, j) = P(landmark_b) * softmax_{j' in b}(q_i k_j')[j]   for j in an earlier block b,

(`longctx_jax.attention.patterns.landmark.landmark_attention`). At inference the landmark
scores pick the `top_k` earlier blocks per head and the query attends to those blocks plus
its own (`landmark_retrieval_attention`), so the attended context stays about
(top_k + 1) * block_size tokens however long the input is.

`LandmarkDecoder` owns a plain `Decoder` and runs its block stack (`Decoder.hidden`) with the
landmark attention as `attention_fn`; it is called like a Decoder on landmark-augmented token
ids, so `longctx_jax.train.step.make_train_step` trains it.
`landmark_passkey_batch` builds the synthetic passkey task with landmarks inserted.
Config: configs/repro_landmark.py (passkey retrieval beyond the training length).
"""

import functools

import numpy as np
from flax import nnx

from longctx_jax.attention.patterns.landmark import (
    insert_landmarks,
    landmark_attention,
    landmark_retrieval_attention,
)
from longctx_jax.data.synthetic_passkey import passkey_batch
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import AttentionFn, Decoder
from longctx_jax.typing import Array


class LandmarkDecoder(nnx.Module):
    """A `Decoder` whose self-attention is landmark attention: ids `[B, L]` -> logits `[B, L, V]`.

    Args:
      cfg: the decoder config; `cfg.vocab_size` includes the landmark token.
      block_size: regular tokens per block (a landmark follows each full block).
      top_k: None trains and evaluates with the grouped softmax over everything; an integer
        switches to top-k block retrieval (inference).
      landmark_id: the landmark token id (default `cfg.vocab_size - 1`).
      impl: "dense" or "blockwise" implementation of the grouped softmax / retrieval.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        block_size: int = 50,
        top_k: int | None = None,
        landmark_id: int | None = None,
        impl: str = "dense",
        rngs: nnx.Rngs,
    ):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if cfg.window is not None or cfg.sinks or cfg.logit_soft_cap is not None or cfg.position == "alibi":
            raise ValueError(
                "LandmarkDecoder supports position 'rope' or 'none' without window, sinks or soft-cap"
            )
        self.decoder = Decoder(cfg, rngs=rngs)
        self.block_size = block_size
        self.top_k = top_k
        self.landmark_id = cfg.vocab_size - 1 if landmark_id is None else landmark_id
        if not 0 <= self.landmark_id < cfg.vocab_size:
            raise ValueError(f"landmark_id {self.landmark_id} outside the vocabulary [0, {cfg.vocab_size})")
        self.impl = impl

    def __call__(
        self, tokens_BL: Array, positions_BL: Array | None = None, segment_ids_BL: Array | None = None
    ) -> Array:
        """Logits `[B, L, V]` of a landmark-augmented sequence (`insert_landmarks` layout).

        `positions_BL` (default 0 .. L-1) feed RoPE; packed documents are not supported.
        """
        if segment_ids_BL is not None:
            raise ValueError(
                "LandmarkDecoder does not take packed segment_ids; train with use_segment_ids=False"
            )
        h = self.decoder.embed_tokens(tokens_BL)
        h = self.decoder.hidden(h, positions_BL, attention_fn=self.attention_fn())
        return self.decoder.logits(h)

    def attention_fn(self) -> AttentionFn:
        """`(q, k, v) -> out` of every layer: the grouped softmax, or top-k retrieval if `top_k`."""
        if self.top_k is None:
            return functools.partial(landmark_attention, block_size=self.block_size, impl=self.impl)
        return functools.partial(
            landmark_retrieval_attention, block_size=self.block_size, top_k=self.top_k, impl=self.impl
        )


def with_landmarks(
    batch: dict[str, np.ndarray], *, block_size: int, landmark_id: int
) -> dict[str, np.ndarray]:
    """A `[B, n]` next-token batch with landmarks inserted into its token sequence.

    The full sequence (inputs plus the last target) gets a landmark after every block of
    `block_size` tokens; inputs/targets are re-derived from it and the loss mask is 0 where
    a landmark is predicted or fed. The answer tokens must not be split by a landmark.
    """
    seq = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
    if seq.shape[1] % block_size in (0, 1):
        raise ValueError(
            f"sequence length {seq.shape[1]} puts a landmark next to the last token; "
            f"choose a length with length % {block_size} not in (0, 1)"
        )
    full = np.asarray(insert_landmarks(seq, landmark_id, block_size))
    mask = np.concatenate([np.zeros_like(batch["loss_mask"][:, :1]), batch["loss_mask"]], axis=1)
    mask = np.asarray(insert_landmarks(mask, 0.0, block_size))
    L = full.shape[1] - 1
    return {
        "inputs": full[:, :-1].astype(np.int32),
        "targets": full[:, 1:].astype(np.int32),
        "positions": np.broadcast_to(np.arange(L, dtype=np.int32), full[:, 1:].shape).copy(),
        "segment_ids": np.ones(full[:, 1:].shape, np.int32),
        "loss_mask": mask[:, 1:].astype(np.float32),
    }


def landmark_passkey_batch(
    rng: np.random.Generator,
    batch: int,
    length: int,
    *,
    num_keys: int,
    vocab_size: int,
    block_size: int,
    key_len: int = 1,
) -> dict[str, np.ndarray]:
    """`data.synthetic_passkey.passkey_batch` (key anywhere before the query) with landmarks inserted.

    `vocab_size` includes the landmark, which is the last id and never used as filler.
    """
    raw = passkey_batch(
        rng,
        batch,
        length,
        num_keys=num_keys,
        vocab_size=vocab_size - 1,
        key_span=length - 2 * key_len - 3,
        key_len=key_len,
    )
    return with_landmarks(raw, block_size=block_size, landmark_id=vocab_size - 1)
