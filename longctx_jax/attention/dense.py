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

from longctx_jax.attention.masks import allowed_BTS
from longctx_jax.attention.spec import AttentionSpec, implementation
from longctx_jax.positional.alibi import alibi_bias
from longctx_jax.typing import Array

# Finite stand-in for -inf: exp(MASKED - max) underflows to 0 without inf - inf = NaN.
MASKED_LOGIT = -1e30


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


def _probabilities(q: Array, k: Array, spec: AttentionSpec) -> tuple[Array, Array, Array]:
    """(probs `[B, K, G, T, S]`, lse `[B, K, G, T]`, allowed-any `[B, K, G, T]`), all float32."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    q_positions, k_positions = spec.positions(B, T, S)
    bias = spec.bias
    if spec.alibi_slopes is not None:
        alibi = alibi_bias(spec.alibi_slopes, q_positions, k_positions)
        bias = alibi if bias is None else bias + alibi
    logits = attention_logits(q, k, scale=spec.scale_for(H), bias=bias, logit_soft_cap=spec.logit_soft_cap)
    allowed = allowed_BTS(spec.pattern, q_positions, k_positions, spec.segment_ids, spec.kv_segment_ids)
    allowed = allowed[:, None, None]
    mask = spec.mask
    if callable(mask):
        mask = mask(q_positions, k_positions)
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask = jnp.broadcast_to(mask.reshape((1,) * (4 - mask.ndim) + mask.shape), (B, N, T, S))
        allowed = allowed & mask.reshape(B, K, N // K, T, S)
    logits = jnp.where(allowed, logits, MASKED_LOGIT)
    row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    row_max = jnp.where(row_max > MASKED_LOGIT / 2, row_max, 0.0)
    weights = jnp.where(allowed, jnp.exp(logits - row_max), 0.0)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    any_allowed = denom[..., 0] > 0.0
    safe = jnp.where(any_allowed[..., None], denom, 1.0)
    lse = jnp.where(any_allowed, (row_max + jnp.log(safe))[..., 0], 0.0)
    return weights / safe, lse, any_allowed


@implementation(name="dense")
def attention_with_lse(q: Array, k: Array, v: Array, spec: AttentionSpec) -> tuple[Array, Array]:
    """Dense attention and its log-sum-exp: (`[B, T, N, H]` in q's dtype, lse `[B, T, N]` float32).

    Rows that may attend to nothing have output 0 and lse 0. Takes every `AttentionSpec` field.
    """
    B, T, N, H = q.shape
    probs, lse, _ = _probabilities(q, k, spec)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(jnp.float32))
    lse_BTN = lse.reshape(B, N, T).transpose(0, 2, 1)
    return out.reshape(B, T, N, H).astype(q.dtype), lse_BTN


@implementation(name="dense")
def attention(q: Array, k: Array, v: Array, spec: AttentionSpec) -> Array:
    """Dense attention over `[B, T, N, H]` queries and `[B, S, K, H]` keys/values.

    Args:
      q, k, v: queries `[B, T, N, H]`, keys and values `[B, S, K, H]`, N % K == 0.
      spec: an `AttentionSpec` (or its fields as keyword arguments): mask, positions,
        segments, bias / ALiBi, soft-cap, scale. Every field is supported; a mask callable is
        evaluated on the full position arrays.

    Returns:
      `[B, T, N, H]` in q's dtype.
    """
    B, T, N, H = q.shape
    probs, _, _ = _probabilities(q, k, spec)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(jnp.float32))
    return out.reshape(B, T, N, H).astype(q.dtype)
