"""Sparse and long-context attention patterns, usable with the oracle and blockwise attention.

Mask patterns (`Longformer`, `BigBird`) are hashable callables
`pattern(q_positions [B, t], k_positions [B, s]) -> bool [B|1, N|1, t, s]` on true
positions: pass `mask=materialise(pattern, ...)` to `dense.attention`, or `mask=pattern`
to `blockwise_attention`, which evaluates it per tile (and skips empty tiles). Sliding
windows and StreamingLLM sinks are `AttentionMask` arguments (`sliding_window`,
`streaming_llm`). LongNet dilated attention and landmark attention change the softmax
itself, so they are functions with an `impl` of "dense" or "blockwise".
"""

from longctx_jax.attention.patterns.bigbird import BigBird
from longctx_jax.attention.patterns.dilated import dilated_attention
from longctx_jax.attention.patterns.landmark import (
    insert_landmarks,
    is_landmark,
    landmark_attention,
    landmark_retrieval_attention,
    landmark_topk_mask,
    remove_landmarks,
)
from longctx_jax.attention.patterns.local import materialise, sliding_window, streaming_llm
from longctx_jax.attention.patterns.longformer import Longformer

__all__ = [
    "BigBird",
    "Longformer",
    "dilated_attention",
    "insert_landmarks",
    "is_landmark",
    "landmark_attention",
    "landmark_retrieval_attention",
    "landmark_topk_mask",
    "materialise",
    "remove_landmarks",
    "sliding_window",
    "streaming_llm",
]
