"""Online-softmax building blocks shared by blockwise, flash-style and ring attention.

Attention over keys split into blocks j is computed one block at a time (Milakov &
Gimelshein 2018; Rabe & Staats 2021; Dao et al. 2022). For each query row keep
    m = running max of logits,  l = sum_j exp(s_j - m),  o = sum_j exp(s_j - m) v_j
and merge two partial states with
    m = max(m1, m2),  l = l1 e^(m1 - m) + l2 e^(m2 - m),  o = o1 e^(m1 - m) + o2 e^(m2 - m).
The output is o / l and the log-sum-exp lse = m + log l is the only residual the backward
needs: per block, p = exp(s - lse), dV = p^T dO, dS = p * (dO V^T - delta) with
delta = rowsum(dO * O), dQ = dS K * scale, dK = dS^T Q * scale.

States are float32 in one of two layouts: token-major, o `[B, T, N, H]` with m / l / lse /
delta `[B, T, N]` (what ring and the patterns carry), or grouped, o `[B, K, G, T, H]` with
m / l `[B, K, G, T]` (K KV heads, G = N / K query heads per KV head), the layout the logits
`[B, K, G, T, S]` come in. `merge` and `finalize` take either. Loops over many key blocks keep
the grouped layout (`to_grouped` once before, `from_grouped` once after): converting a
`[B, T, N]` state every block costs as much as the block's matmuls on a CPU.
`allowed` is a boolean mask broadcastable to `[B, K, G, T, S]` (see `expand_allowed`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from longctx_jax.attention.dense import MASKED_LOGIT, attention_logits, soft_cap
from longctx_jax.typing import Array


class SoftmaxState(NamedTuple):
    """Unnormalised output, running max and running denominator of a set of key blocks.

    `out` has the query layout (`[B, T, N, H]` or `[B, K, G, T, H]`), `max` / `denom` the
    same without the trailing head dimension.
    """

    out: Array
    max: Array
    denom: Array


def expand_allowed(allowed_BTS: Array) -> Array:
    """`[B, T, S]` mask to the `[B, 1, 1, T, S]` layout the logits use."""
    return allowed_BTS[:, None, None]


def _to_BTN(x_BKGT: Array) -> Array:
    B, K, G, T = x_BKGT.shape
    return x_BKGT.transpose(0, 3, 1, 2).reshape(B, T, K * G)


def _to_BKGT(x_BTN: Array, num_kv_heads: int) -> Array:
    B, T, N = x_BTN.shape
    return x_BTN.reshape(B, T, num_kv_heads, N // num_kv_heads).transpose(0, 2, 3, 1)


def empty_state(q: Array) -> SoftmaxState:
    """The state of no keys at all, in the layout of `q` (`[B, T, N, H]` or `[B, K, G, T, H]`)."""
    rows = q.shape[:-1]
    return SoftmaxState(
        jnp.zeros(q.shape, jnp.float32),
        jnp.full(rows, MASKED_LOGIT, jnp.float32),
        jnp.zeros(rows, jnp.float32),
    )


def group_heads(x_bntS: Array, num_heads: int, num_kv_heads: int) -> Array:
    """A per-head mask or bias `[b, N|1, t, s]` to the `[b, K|1, G|1, t, s]` layout of the logits."""
    b, n, t, s = x_bntS.shape
    if n == 1:
        return x_bntS[:, None]
    if n != num_heads:
        raise ValueError(f"mask/bias head dim must be 1 or {num_heads}, got {n}")
    return x_bntS.reshape(b, num_kv_heads, num_heads // num_kv_heads, t, s)


def to_grouped(q_BTNH: Array, num_kv_heads: int) -> Array:
    """Queries `[B, T, N, H]` to the grouped layout `[B, K, G, T, H]`."""
    B, T, N, H = q_BTNH.shape
    return q_BTNH.reshape(B, T, num_kv_heads, N // num_kv_heads, H).transpose(0, 2, 3, 1, 4)


def kv_to_grouped(x_BSKH: Array) -> Array:
    """Keys or values `[B, S, K, H]` to `[B, K, S, H]`."""
    return x_BSKH.transpose(0, 2, 1, 3)


def from_grouped(out_BKGTH: Array, rows_BKGT: Array) -> tuple[Array, Array]:
    """Grouped output and a per-row array (lse, max) back to `[B, T, N, H]`, `[B, T, N]`."""
    B, K, G, T, H = out_BKGTH.shape
    return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, K * G, H), _to_BTN(rows_BKGT)


def grouped_block_forward(
    q_BKGTH: Array,
    k_BKSH: Array,
    v_BKSH: Array,
    allowed: Array | None,
    *,
    scale: float,
    bias: Array | None = None,
    logit_soft_cap: float | None = None,
) -> SoftmaxState:
    """Softmax state `[B, K, G, T, ...]` of one key block; `allowed=None` means every pair.

    `bias` broadcasts to `[B, K, G, T, S]`. Skipping the mask on tiles known to be full saves
    two selects over the tile.
    """
    logits = jnp.einsum("BKGTH,BKSH->BKGTS", q_BKGTH, k_BKSH, preferred_element_type=jnp.float32) * scale
    logits = soft_cap(logits, logit_soft_cap)
    if bias is not None:
        logits = logits + bias
    if allowed is not None:
        logits = jnp.where(allowed, logits, MASKED_LOGIT)
    block_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
    weights = jnp.exp(logits - block_max[..., None])
    if allowed is not None:
        weights = jnp.where(allowed, weights, 0.0)
    out = jnp.einsum("BKGTS,BKSH->BKGTH", weights, v_BKSH.astype(jnp.float32))
    return SoftmaxState(out, block_max, jnp.sum(weights, axis=-1))


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
    """Softmax state of one key block in the token-major layout; `bias` is `[b, N|1, T, S]`."""
    N = q_BTNH.shape[2]
    K = k_BSKH.shape[2]
    grouped_bias = None if bias is None else group_heads(jnp.asarray(bias, jnp.float32), N, K)
    state = grouped_block_forward(
        to_grouped(q_BTNH, K), kv_to_grouped(k_BSKH), kv_to_grouped(v_BSKH), allowed,
        scale=scale, bias=grouped_bias, logit_soft_cap=logit_soft_cap,
    )
    out_BTNH, max_BTN = from_grouped(state.out, state.max)
    return SoftmaxState(out_BTNH, max_BTN, _to_BTN(state.denom))


def merge(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """Combines the states of two disjoint key sets."""
    new_max = jnp.maximum(a.max, b.max)
    scale_a = jnp.exp(a.max - new_max)
    scale_b = jnp.exp(b.max - new_max)
    return SoftmaxState(
        a.out * scale_a[..., None] + b.out * scale_b[..., None],
        new_max,
        a.denom * scale_a + b.denom * scale_b,
    )


def finalize(state: SoftmaxState) -> tuple[Array, Array]:
    """Normalised output `[B, T, N, H]` (float32) and lse `[B, T, N]`.

    Rows that saw no allowed key get output 0 and lse 0 (their p is masked to 0 anyway).
    """
    empty = state.denom == 0.0
    denom = jnp.where(empty, 1.0, state.denom)
    out = state.out / denom[..., None]
    lse = jnp.where(empty, 0.0, state.max + jnp.log(denom))
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
    capped = soft_cap(raw * scale, logit_soft_cap)
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
