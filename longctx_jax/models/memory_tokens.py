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
the same parameters and compute). Its task, a passkey early in the sequence asked for at the
end, is `longctx_jax.data.synthetic_passkey.passkey_batch`; the training loop of
configs/repro_memory_tokens.py is `longctx_jax.train.synthetic`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.typing import Array


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
