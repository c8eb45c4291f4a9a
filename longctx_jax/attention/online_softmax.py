"""Online-softmax building blocks shared by blockwise, flash-style and ring attention.

Attention over keys split into blocks j is computed one block at a time (Milakov &
Gimelshein 2018; Rabe & Staats 2021; Dao et al. 2022). For each query row keep
    m = running max of logits,  l = sum_j exp(s_j - m),  o = sum_j exp(s_j - m) v_j
and merge two partial states with
    m = max(m1, m2),  l = l1 e^(m1 - m) + l2 e^(m2 - m),  o = o1 e^(m1 - m) + o2 e^(m2 - m).
The output is o / l and the log-sum-exp lse = m + log l is the only residual the backward
needs: per block, p = exp(s - lse), dV = p^T dO, dS = p * (dO V^T - delta) with
delta = rowsum(dO * O), dQ = dS K * scale, dK = dS^T Q * scale.

All states are float32 with shapes o `[B, T, N, H]`, m / l / lse / delta `[B, T, N]`.
`allowed` is a boolean mask broadcastable to `[B, K, G, T, S]` (see `expand_allowed`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from longctx_jax.attention.dense import MASKED_LOGIT, attention_logits
from longctx_jax.typing import Array


class SoftmaxState(NamedTuple):
    """Unnormalised output, running max and running denominator of a set of key blocks."""

    out_BTNH: Array
    max_BTN: Array
    denom_BTN: Array


def expand_allowed(allowed_BTS: Array) -> Array:
    """`[B, T, S]` mask to the `[B, 1, 1, T, S]` layout the logits use."""
    return allowed_BTS[:, None, None]


def _to_BTN(x_BKGT: Array) -> Array:
    B, K, G, T = x_BKGT.shape
    return x_BKGT.transpose(0, 3, 1, 2).reshape(B, T, K * G)


def _to_BKGT(x_BTN: Array, num_kv_heads: int) -> Array:
    B, T, N = x_BTN.shape
    return x_BTN.reshape(B, T, num_kv_heads, N // num_kv_heads).transpose(0, 2, 3, 1)


def empty_state(q_BTNH: Array) -> SoftmaxState:
    """The state of no keys at all."""
    B, T, N, H = q_BTNH.shape
    return SoftmaxState(
        jnp.zeros((B, T, N, H), jnp.float32),
        jnp.full((B, T, N), MASKED_LOGIT, jnp.float32),
        jnp.zeros((B, T, N), jnp.float32),
    )


def block_forward(
    q_BTNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    allowed: Array,
    *,
    scale: float,
    bias: Array | None = None,
    logit_soft_cap: float | None = None,
) -> SoftmaxState:
    """Softmax state of one key block."""
    B, T, N, H = q_BTNH.shape
    logits = attention_logits(q_BTNH, k_BSKH, scale=scale, bias=bias, logit_soft_cap=logit_soft_cap)
    logits = jnp.where(allowed, logits, MASKED_LOGIT)
    block_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
    weights = jnp.where(allowed, jnp.exp(logits - block_max[..., None]), 0.0)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", weights, v_BSKH.astype(jnp.float32))
    return SoftmaxState(
        out.reshape(B, T, N, H), _to_BTN(block_max), _to_BTN(jnp.sum(weights, axis=-1))
    )


def merge(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """Combines the states of two disjoint key sets."""
    new_max = jnp.maximum(a.max_BTN, b.max_BTN)
    scale_a = jnp.exp(a.max_BTN - new_max)
    scale_b = jnp.exp(b.max_BTN - new_max)
    return SoftmaxState(
        a.out_BTNH * scale_a[..., None] + b.out_BTNH * scale_b[..., None],
        new_max,
        a.denom_BTN * scale_a + b.denom_BTN * scale_b,
    )


def finalize(state: SoftmaxState) -> tuple[Array, Array]:
    """Normalised output `[B, T, N, H]` (float32) and lse `[B, T, N]`.

    Rows that saw no allowed key get output 0 and lse 0 (their p is masked to 0 anyway).
    """
    empty = state.denom_BTN == 0.0
    denom = jnp.where(empty, 1.0, state.denom_BTN)
    out = state.out_BTNH / denom[..., None]
    lse = jnp.where(empty, 0.0, state.max_BTN + jnp.log(denom))
    return out, lse


def block_backward(
    q_BTNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    d_out_BTNH: Array,
    lse_BTN: Array,
    delta_BTN: Array,
    allowed: Array,
    *,
    scale: float,
    bias: Array | None = None,
    logit_soft_cap: float | None = None,
) -> tuple[Array, Array, Array, Array]:
    """Gradient contributions of one key block: (dq, dk, dv, dlogits `[B, K, G, T, S]`).

    dlogits is the gradient w.r.t. the additive bias (sum it over broadcast axes).
    All results are float32.
    """
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    G = N // K
    raw = attention_logits(q_BTNH, k_BSKH, scale=1.0)
    capped = raw * scale
    if logit_soft_cap is not None:
        capped = logit_soft_cap * jnp.tanh(capped / logit_soft_cap)
    logits = capped if bias is None else capped + jnp.broadcast_to(bias, capped.shape)
    lse = _to_BKGT(lse_BTN, K)[..., None]
    probs = jnp.where(allowed, jnp.exp(jnp.where(allowed, logits, lse) - lse), 0.0)
    d_out_BTKGH = d_out_BTNH.astype(jnp.float32).reshape(B, T, K, G, H)
    dv = jnp.einsum("BKGTS,BTKGH->BSKH", probs, d_out_BTKGH)
    dprobs = jnp.einsum("BTKGH,BSKH->BKGTS", d_out_BTKGH, v_BSKH.astype(jnp.float32))
    dlogits = probs * (dprobs - _to_BKGT(delta_BTN, K)[..., None])
    draw = dlogits
    if logit_soft_cap is not None:
        draw = draw * (1.0 - jnp.square(capped / logit_soft_cap))
    draw = draw * scale
    q_BTKGH = q_BTNH.astype(jnp.float32).reshape(B, T, K, G, H)
    dq = jnp.einsum("BKGTS,BSKH->BTKGH", draw, k_BSKH.astype(jnp.float32)).reshape(B, T, N, H)
    dk = jnp.einsum("BKGTS,BTKGH->BSKH", draw, q_BTKGH)
    return dq, dk, dv, dlogits


def output_delta(out_BTNH: Array, d_out_BTNH: Array) -> Array:
    """delta = rowsum(dO * O), `[B, T, N]` float32."""
    return jnp.sum(out_BTNH.astype(jnp.float32) * d_out_BTNH.astype(jnp.float32), axis=-1)
