"""Sliding-window and StreamingLLM patterns: `AttentionMask` settings, plus `materialise`.

Sliding window (Beltagy et al. 2020 local part; Mistral 7B): with window w,
    causal:        allowed(q, k) = q - w < k <= q
    bidirectional: allowed(q, k) = |q - k| < w
StreamingLLM (Xiao et al. 2023, "Efficient Streaming Language Models with Attention
Sinks"): the first `sinks` tokens (default 4) stay visible to every query beside a causal
window of the w most recent keys,
    allowed(q, k) = k <= q and (q - k < w or k < sinks).
Both are native `AttentionMask` arguments, so every implementation (dense, blockwise,
flash, ring) runs them without a materialised mask.
"""

from collections.abc import Callable

from longctx_jax.attention.masks import AttentionMask, default_positions
from longctx_jax.typing import Array


def sliding_window(window: int, causal: bool = True) -> dict:
    """Keyword arguments for a sliding window of `window` keys (own position included)."""
    AttentionMask(causal=causal, window=window)
    return dict(causal=causal, window=window)


def streaming_llm(window: int, sinks: int = 4) -> dict:
    """Keyword arguments for StreamingLLM: `sinks` first tokens + a causal window."""
    AttentionMask(causal=True, window=window, sinks=sinks)
    return dict(causal=True, window=window, sinks=sinks)


def materialise(pattern: Callable[[Array, Array], Array], batch: int, q_len: int, k_len: int) -> Array:
    """A pattern's dense boolean mask `[batch|1, N|1, q_len, k_len]` on default positions."""
    return pattern(default_positions(batch, q_len), default_positions(batch, k_len))
