"""Preallocated key/value cache for incremental decoding, with a StreamingLLM mode.

The cache holds, per layer, keys and values `[B, C, K, H]` for the K key/value heads only
(grouped-query attention never stores the N query heads), in a fixed capacity C, so every
decode step has the same shapes and compiles once. `length` counts all tokens ever written.

Plain mode: token t lives in slot t; writing past C is refused (`check_room`).

StreamingLLM mode (Xiao et al. 2023, "Efficient Streaming Language Models with Attention
Sinks"): the cache keeps the first `sinks` tokens and a rolling window of the most recent
w = C - sinks tokens, so generation runs for any number of tokens in constant memory. As
in the authors' code, keys are cached BEFORE RoPE and positions are re-indexed inside the
cache: with n tokens written and m = min(n - sinks, w) of them in the window,

    rank(t) = t                          for a sink, t < sinks
    rank(t) = sinks + t - (n - m)        for a window token, n - m <= t < n

keys are rotated by their rank at every step and the new query by its own rank (the cache
length), so relative distances never exceed C whatever n is. Token t >= sinks is stored in
the ring slot sinks + (t - sinks) mod w. In plain mode the same formulas give rank(t) = t.
"""

import dataclasses

import jax
import jax.numpy as jnp

from longctx_jax.typing import Array

# Position given to empty slots: larger than any query position, so causal masks drop them.
EMPTY_POSITION = 2**30


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CachePlan:
    """Where a step writes and which positions its queries and the cached keys carry."""

    write_index: Array  # int32 []: first slot written
    q_positions_BT: Array  # int32 [B, T]: rotation / mask positions of the new queries
    k_positions_BC: Array  # int32 [B, C]: positions of every slot after the write
    rotate_on_read: bool = dataclasses.field(metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Per-layer keys and values `[B, C, K, H]` and the number of tokens written.

    Attributes:
      k, v: tuples of `num_layers` arrays `[batch, capacity, kv_heads, head_dim]`.
      length: int32 scalar, tokens written so far (may exceed capacity in streaming mode).
      sinks: tokens kept forever at the front (StreamingLLM); 0 in plain mode.
      streaming: StreamingLLM rolling mode (keys stored before RoPE).
    """

    k: tuple[Array, ...]
    v: tuple[Array, ...]
    length: Array
    sinks: int = dataclasses.field(default=0, metadata=dict(static=True))
    streaming: bool = dataclasses.field(default=False, metadata=dict(static=True))

    @classmethod
    def create(
        cls,
        *,
        num_layers: int,
        batch: int,
        capacity: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: str | jnp.dtype = "float32",
        streaming: bool = False,
        sinks: int = 4,
    ) -> "KVCache":
        """An empty cache of `capacity` slots per layer.

        Args:
          streaming: StreamingLLM mode; `sinks` (default 4) tokens plus a window of
            `capacity - sinks` recent tokens. Ignored sinks in plain mode.
        """
        if capacity < 1 or batch < 1 or num_layers < 1:
            raise ValueError(
                f"capacity, batch and num_layers must be >= 1, got {capacity}, {batch}, {num_layers}")
        if streaming and not 0 <= sinks < capacity:
            raise ValueError(
                f"streaming cache needs 0 <= sinks < capacity, got sinks={sinks}, capacity={capacity}")
        shape = (batch, capacity, num_kv_heads, head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
        return cls(k=zeros, v=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
                   length=jnp.zeros((), jnp.int32), sinks=sinks if streaming else 0, streaming=streaming)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1]

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    def check_room(self, length: int, num_new: int) -> None:
        """Raises ValueError when writing `num_new` tokens after `length` is impossible.

        Plain mode: everything must fit in the capacity. Streaming mode: a multi-token step
        must fit without eviction (one token at a time may always roll the window).
        """
        if num_new < 1:
            raise ValueError(f"a cache step needs at least one token, got {num_new}")
        if length + num_new <= self.capacity:
            return
        if self.streaming and num_new == 1:
            return
        mode = "streaming cache (steps that evict must be single tokens)" if self.streaming else "cache"
        raise ValueError(
            f"{num_new} new tokens after {length} cached do not fit the {mode} of {self.capacity} slots; "
            "use a larger cache_size or a shorter prompt"
        )

    def plan(self, num_new: int) -> CachePlan:
        """Slots and positions for writing `num_new` tokens (traceable: `length` may be traced)."""
        C, s = self.capacity, self.sinks
        w = C - s
        n = self.length
        n_after = n + num_new
        m = jnp.clip(n_after - s, 0, w)
        oldest = n_after - m

        def rank(t):
            return jnp.where(t < s, t, s + t - oldest)

        write_index = jnp.where(n < C, n, s + (n - s) % w).astype(jnp.int32)
        q_pos = rank(n + jnp.arange(num_new, dtype=jnp.int32))
        slots = jnp.arange(C, dtype=jnp.int32)
        # Latest token held by each slot: sinks hold token j; ring slot j holds the latest
        # t < n_after with s + (t - s) mod w == j.
        token = jnp.where(slots < s, slots, n_after - 1 - (n_after - 1 - slots) % w)
        valid = (token >= 0) & (token < n_after) & ((slots < s) | (token >= s))
        k_pos = jnp.where(valid, rank(token), EMPTY_POSITION)
        B = self.batch
        return CachePlan(
            write_index=write_index,
            q_positions_BT=jnp.broadcast_to(q_pos, (B, num_new)).astype(jnp.int32),
            k_positions_BC=jnp.broadcast_to(k_pos, (B, C)).astype(jnp.int32),
            rotate_on_read=self.streaming,
        )

    def emptied(self) -> "KVCache":
        """The same cache with no tokens written (slots keep stale values; no step reads them)."""
        return dataclasses.replace(self, length=jnp.zeros((), jnp.int32))

    def advance(self, k: tuple[Array, ...], v: tuple[Array, ...], num_new: int) -> "KVCache":
        """The cache after a step wrote `num_new` tokens into the layer arrays `k`, `v`."""
        return dataclasses.replace(self, k=tuple(k), v=tuple(v), length=self.length + num_new)


def write(cache_BCKH: Array, new_BTKH: Array, write_index: Array) -> Array:
    """Writes `new` into consecutive slots from `write_index` (in place under donation)."""
    new_BTKH = new_BTKH.astype(cache_BCKH.dtype)
    return jax.lax.dynamic_update_slice_in_dim(cache_BCKH, new_BTKH, write_index, axis=1)
