"""Memory tokens: the Recurrent Memory Transformer (Bulatov et al. 2022, arXiv:2207.06881).

A long sequence is cut into segments of S tokens. M learnable memory embeddings are the
read memory of the first segment; every segment runs through the decoder as

    x = [ mem_read (M) | segment tokens (S) | mem_write (M) ]    (positions 0 .. 2M + S - 1)
    mem_read(next) = h_L(mem_write)                               (last layer's hidden states)

with causal attention, so the read memory is visible to every token and the write memory
sees the whole segment; the write slots are fed the current memory too (RMT's decoder form).
Logits are taken at the segment tokens only. Training backpropagates through the recurrence,
truncated every `bptt_segments` segments (a stop_gradient on the memory entering a segment).

`MemoryTokenDecoder` owns a plain `Decoder`, runs its block stack (`Decoder.hidden`) on the
memory-augmented embeddings, and is called like one
(`model(tokens[B, L]) -> logits[B, L, V]`), so `longctx_jax.train.step.make_train_step`
trains it unchanged. `carry_memory=False` resets the memory every segment (the ablation with
the same parameters and compute). `passkey_batch` makes the synthetic task used by the tests
and configs/repro_memory_tokens.py: a passkey early in the sequence, asked for at the end.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.train.optimizer import make_optimizer
from longctx_jax.train.step import init_train_state, make_train_step
from longctx_jax.typing import Array

# Token ids of the synthetic passkey task (the vocabulary must hold FIRST_FILLER + a few).
PAD, KEY_MARK, QUERY_MARK, FIRST_KEY = 0, 1, 2, 3


class MemoryTokenDecoder(nnx.Module):
    """RMT around a `Decoder`: tokens `[B, L]` (L a multiple of segment_len) -> logits `[B, L, V]`."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        num_memory: int,
        segment_len: int,
        bptt_segments: int | None = None,
        carry_memory: bool = True,
        rngs: nnx.Rngs,
    ):
        if num_memory <= 0 or segment_len <= 0:
            raise ValueError(f"num_memory ({num_memory}) and segment_len ({segment_len}) must be positive")
        if bptt_segments is not None and bptt_segments <= 0:
            raise ValueError(f"bptt_segments must be positive or None (no truncation), got {bptt_segments}")
        self.decoder = Decoder(cfg, rngs=rngs)
        self.num_memory = num_memory
        self.segment_len = segment_len
        self.bptt_segments = bptt_segments
        self.carry_memory = carry_memory  # False: the no-recurrence ablation
        init = jax.random.normal(rngs.params(), (num_memory, cfg.d_model), jnp.float32) * cfg.init_std
        self.memory = nnx.Param(init.astype(jnp.dtype(cfg.param_dtype)), logical_axes=("memory", "embed"))

    def initial_memory(self, batch: int) -> Array:
        """The learned read memory of the first segment `[B, M, D]`."""
        mem = self.memory[...].astype(jnp.dtype(self.decoder.cfg.dtype))
        return jnp.broadcast_to(mem, (batch,) + mem.shape)

    def segment(self, mem_BMD: Array, tokens_BS: Array) -> tuple[Array, Array]:
        """One segment: (logits of its tokens `[B, S, V]`, the write memory `[B, M, D]`)."""
        B, S = tokens_BS.shape
        M = self.num_memory
        h = jnp.concatenate([mem_BMD, self.decoder.embed_tokens(tokens_BS), mem_BMD], axis=1)
        positions = jnp.broadcast_to(jnp.arange(2 * M + S, dtype=jnp.int32), (B, 2 * M + S))
        h = self.decoder.hidden(h, positions)
        return self.decoder.logits(h[:, M : M + S]), h[:, M + S :]

    def run_segments(self, mem_BMD: Array, tokens_BL: Array) -> tuple[Array, Array]:
        """All segments from a given read memory: (logits `[B, L, V]`, final memory `[B, M, D]`)."""
        B, L = tokens_BL.shape
        if L % self.segment_len:
            raise ValueError(f"sequence length {L} must be a multiple of segment_len {self.segment_len}")
        first = mem_BMD
        logits = []
        for i in range(L // self.segment_len):
            if i and not self.carry_memory:
                mem_BMD = first
            elif i and self.bptt_segments is not None and i % self.bptt_segments == 0:
                mem_BMD = jax.lax.stop_gradient(mem_BMD)
            out, mem_BMD = self.segment(
                mem_BMD, tokens_BL[:, i * self.segment_len : (i + 1) * self.segment_len]
            )
            logits.append(out)
        return jnp.concatenate(logits, axis=1), mem_BMD

    def __call__(
        self, tokens_BL: Array, positions_BL: Array | None = None, segment_ids_BL: Array | None = None
    ) -> Array:
        """Logits `[B, L, V]`; the signature of `Decoder.__call__` so the train steps take it.

        Positions are fixed by the memory layout (0 .. 2M + S - 1 in every segment), so
        `positions_BL` is accepted for the shared step signature and not used; packed
        documents are not supported (`segment_ids_BL` must be None).
        """
        if segment_ids_BL is not None:
            raise ValueError(
                "MemoryTokenDecoder does not take packed segment_ids; train with use_segment_ids=False"
            )
        return self.run_segments(self.initial_memory(tokens_BL.shape[0]), tokens_BL)[0]


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
    positions, segment_ids, loss_mask) with loss_mask 1 only on the answer tokens.
    """
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


def exact_match(logits_BLV: Array, batch: dict[str, np.ndarray]) -> float:
    """Fraction of sequences whose every answer token (loss_mask 1) is the argmax prediction."""
    hit = (np.asarray(jnp.argmax(logits_BLV, axis=-1)) == batch["targets"]) | (batch["loss_mask"] == 0)
    return float(np.mean(np.all(hit, axis=-1)))


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
    `train.optimizer.make_optimizer` (AdamW, warmup + cosine, clipping). Returns the trained
    model and the training loss of every step.
    """
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
