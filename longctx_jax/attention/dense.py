"""Reference dense attention: the oracle every other implementation is tested against.

    out = softmax(scale * q k^T + bias, masked) v

over `[batch, seq, heads, head_dim]` arrays, with grouped-query KV heads (N query heads
share K = N / G key/value heads), masks from true positions (`AttentionMask`), packed
documents (segment ids), an additive bias (e.g. ALiBi, any `[B|1, N|1, T, S]`), ALiBi
computed from slopes, an optional logit soft-cap (cap * tanh(logits / cap), Gemma 2) and
an arbitrary boolean pattern mask. Softmax runs in float32. A query that may attend to
nothing returns zeros, with zero gradients.
"""

import jax
import jax.numpy as jnp

from longctx_jax.attention.masks import AttentionMask, allowed_BTS, default_positions
from longctx_jax.positional.alibi import alibi_bias
from longctx_jax.typing import Array, ArrayLike

# Finite stand-in for -inf: exp(MASKED - max) underflows to 0 without inf - inf = NaN.
MASKED_LOGIT = -1e30


def group_heads(num_q_heads: int, num_kv_heads: int) -> int:
    """Query heads per KV head, with a clear error when they do not divide."""
    if num_kv_heads <= 0 or num_q_heads % num_kv_heads:
        raise ValueError(
            f"query heads ({num_q_heads}) must be a positive multiple of key/value heads ({num_kv_heads})"
        )
    return num_q_heads // num_kv_heads


def check_qkv(q: Array, k: Array, v: Array) -> int:
    """Validates `[B, T, N, H]` / `[B, S, K, H]` shapes and returns G = N / K."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be [batch, seq, heads, head_dim]; got {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape != v.shape[:3] + (k.shape[3],) or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k {k.shape} and v {v.shape} must agree in batch, seq and heads")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {q.shape} and k {k.shape} must agree in batch and head_dim")
    return group_heads(q.shape[2], k.shape[2])


def soft_cap(logits: Array, logit_soft_cap: float | None) -> Array:
    """cap * tanh(logits / cap) (Gemma 2), or `logits` unchanged when the cap is None."""
    return logits if logit_soft_cap is None else logit_soft_cap * jnp.tanh(logits / logit_soft_cap)


def attention_logits(
    q_BTNH: Array,
    k_BSKH: Array,
    *,
    scale: float,
    bias: Array | None = None,
    logit_soft_cap: float | None = None,
) -> Array:
    """Float32 logits `[B, K, G, T, S]`, scaled, soft-capped, with the bias added."""
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
    logits = jnp.einsum(
        "BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH, preferred_element_type=jnp.float32
    ) * scale
    logits = soft_cap(logits, logit_soft_cap)
    if bias is not None:
        bias = jnp.broadcast_to(jnp.asarray(bias, jnp.float32), (bias.shape[0], N) + bias.shape[2:])
        logits = logits + bias.reshape(bias.shape[0], K, N // K, *bias.shape[2:])
    return logits


def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool = True,
    window: int | None = None,
    sinks: int = 0,
    bias: Array | None = None,
    alibi_slopes: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
    kv_segment_ids: ArrayLike | None = None,
    q_positions: ArrayLike | None = None,
    k_positions: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    logit_soft_cap: float | None = None,
    scale: float | None = None,
) -> Array:
    """Dense attention over `[B, T, N, H]` queries and `[B, S, K, H]` keys/values.

    Args:
      q, k, v: queries `[B, T, N, H]`, keys and values `[B, S, K, H]`, N % K == 0.
      causal, window, sinks: the `AttentionMask` pattern, on true positions.
      bias: additive logits bias broadcastable to `[B, N, T, S]`.
      alibi_slopes: `[N]` ALiBi slopes; adds -slope * |q_pos - k_pos|.
      segment_ids: `[B, T]` packed-document ids of the queries (and of the keys when
        `kv_segment_ids` is None); tokens attend only within their own document.
      q_positions, k_positions: `[B, T]` / `[B, S]` true positions (default 0..len-1).
      mask: extra boolean pattern broadcastable to `[B, N, T, S]` (True = may attend).
      logit_soft_cap: if set, logits become cap * tanh(logits / cap).
      scale: logit scale, default 1 / sqrt(head_dim).

    Returns:
      `[B, T, N, H]` in q's dtype.
    """
    check_qkv(q, k, v)
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    scale = H**-0.5 if scale is None else scale
    q_positions = default_positions(B, T) if q_positions is None else jnp.broadcast_to(q_positions, (B, T))
    k_positions = default_positions(B, S) if k_positions is None else jnp.broadcast_to(k_positions, (B, S))
    if alibi_slopes is not None:
        alibi = alibi_bias(alibi_slopes, q_positions, k_positions)
        bias = alibi if bias is None else bias + alibi
    logits = attention_logits(q, k, scale=scale, bias=bias, logit_soft_cap=logit_soft_cap)
    allowed = allowed_BTS(
        AttentionMask(causal=causal, window=window, sinks=sinks),
        q_positions, k_positions, segment_ids, kv_segment_ids,
    )[:, None, None]
    if mask is not None:
        mask = jnp.broadcast_to(jnp.asarray(mask, bool), (B, N, T, S))
        allowed = allowed & mask.reshape(B, K, N // K, T, S)
    logits = jnp.where(allowed, logits, MASKED_LOGIT)
    row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    row_max = jnp.where(row_max > MASKED_LOGIT / 2, row_max, 0.0)
    weights = jnp.where(allowed, jnp.exp(logits - row_max), 0.0)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    probs = weights / jnp.where(denom == 0.0, 1.0, denom)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(jnp.float32))
    return out.reshape(B, T, N, H).astype(q.dtype)
