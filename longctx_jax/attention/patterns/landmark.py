"""Landmark attention (Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite
Context Length for Transformers").

A landmark token is inserted after every `block_size` tokens (default 50), so a sequence
with landmarks has blocks of block_size + 1 positions, the last one the landmark. Block of
position p: c(p) = p // (block_size + 1). For a query i the keys j <= i split into
    last(i) = {j : c(j) = c(i)}  and the landmarks of earlier blocks  -> one softmax group,
    each earlier block b's regular tokens                              -> group b.
Grouped softmax (Sec. 3.1, training form): with P = softmax of the logits over last(i) and
the earlier landmarks, and p_b(j) = softmax of the logits over block b's regular tokens,
    weight(i, j) = P(j)                  for j in last(i)
                 = P(landmark_b) p_b(j)  for a regular j in an earlier block b
                 = 0                     for earlier landmarks (they only gate)
    out_i = sum_j weight(i, j) v_j.
Equivalently, in online-softmax terms, each earlier block contributes a state with running
max s(i, landmark_b), denominator 1 and output sum_j p_b(j) v_j, merged with the state of
last(i): that is how `impl="blockwise"` computes it, one key block at a time.

Inference (Sec. 3.2): per head, score the landmarks of earlier complete blocks with the
query, keep the `top_k` blocks (default 4), and attend with a standard softmax to the
retrieved blocks' regular tokens plus the query's own block (`landmark_topk_mask`,
`landmark_retrieval_attention`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from longctx_jax.attention import online_softmax as osm
from longctx_jax.attention.dense import MASKED_LOGIT, attention_logits
from longctx_jax.attention.dispatch import attend
from longctx_jax.attention.spec import AttentionSpec, check_qkv
from longctx_jax.typing import Array, ArrayLike


def is_landmark(length: int, block_size: int = 50) -> np.ndarray:
    """`[length]` bool: which positions of a landmark-augmented sequence are landmarks."""
    return np.arange(length) % (block_size + 1) == block_size


def insert_landmarks(x_BT: ArrayLike, landmark: ArrayLike, block_size: int = 50) -> Array:
    """Inserts `landmark` (a token id, or a `[...]` feature vector) after every full block.

    `[B, T, ...]` -> `[B, T + T // block_size, ...]`; a trailing partial block gets none.
    """
    x = jnp.asarray(x_BT)
    B, T = x.shape[:2]
    full = T // block_size
    head = x[:, : full * block_size].reshape(B, full, block_size, *x.shape[2:])
    mark = jnp.broadcast_to(jnp.asarray(landmark, x.dtype), (B, full, 1, *x.shape[2:]))
    blocks = jnp.concatenate([head, mark], axis=2).reshape(B, full * (block_size + 1), *x.shape[2:])
    return jnp.concatenate([blocks, x[:, full * block_size:]], axis=1)


def remove_landmarks(x_BL: ArrayLike, block_size: int = 50) -> Array:
    """Inverse of `insert_landmarks` on axis 1: drops the landmark positions."""
    x = jnp.asarray(x_BL)
    return x[:, np.flatnonzero(~is_landmark(x.shape[1], block_size))]


def _structure(L: int, block_size: int):
    pos = np.arange(L)
    block = pos // (block_size + 1)
    return block, is_landmark(L, block_size)


def _dense_grouped(q, k, v, block_size: int, scale: float) -> Array:
    B, L, N, H = q.shape
    bs1 = block_size + 1
    nb = -(-L // bs1)
    Lp = nb * bs1
    block, lm = _structure(L, block_size)
    i, j = np.arange(L)[:, None], np.arange(L)[None, :]
    causal = j <= i
    last = causal & (block[j] == block[i])
    earlier = causal & (block[j] < block[i])
    direct = last | (earlier & lm[j])
    grouped = earlier & ~lm[j]
    s = attention_logits(q, k, scale=scale)  # [B, K, G, L, L]
    p_direct = jax.nn.softmax(jnp.where(direct, s, MASKED_LOGIT), axis=-1) * direct
    pad = [(0, 0)] * 4 + [(0, Lp - L)]
    s_blk = jnp.pad(jnp.where(grouped, s, MASKED_LOGIT), pad, constant_values=MASKED_LOGIT)
    g_blk = np.pad(grouped, [(0, 0), (0, Lp - L)]).reshape(L, nb, bs1)
    s_blk = s_blk.reshape(*s.shape[:4], nb, bs1)
    p_in = jax.nn.softmax(s_blk, axis=-1) * g_blk
    gate = jnp.pad(p_direct, pad).reshape(*s.shape[:4], nb, bs1)[..., block_size:block_size + 1]
    weights = (p_in * gate).reshape(*s.shape[:4], Lp)[..., :L] + p_direct * last
    out = jnp.einsum("BKGTS,BSKH->BTKGH", weights, v.astype(jnp.float32))
    return out.reshape(B, L, N, H)


def _blockwise_grouped(q, k, v, block_size: int, scale: float) -> Array:
    B, L, N, H = q.shape
    K = k.shape[2]
    bs1 = block_size + 1
    nb = -(-L // bs1)
    Lp = nb * bs1
    pad = [(0, 0), (0, Lp - L), (0, 0), (0, 0)]
    k_J, v_J = (jnp.pad(x, pad).reshape(B, nb, bs1, K, H).transpose(1, 0, 2, 3, 4) for x in (k, v))
    q_block = jnp.asarray(np.arange(L) // bs1)
    q_pos = jnp.arange(L)

    @jax.checkpoint
    def step(state, xs):
        b, k_b, v_b = xs
        k_pos = b * bs1 + jnp.arange(bs1)
        # Own block: ordinary causal attention (a landmark query also sees itself).
        own = (q_block[:, None] == b) & (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] < L)
        state = osm.merge(state, osm.block_forward(q, k_b, v_b, own[None, None, None], scale=scale))
        # Earlier block b: within-block softmax over its regular tokens, gated by its landmark.
        later = (q_block > b) & (b * bs1 + block_size < L)  # block b is complete
        regular = jnp.broadcast_to(later[:, None], (L, block_size))[None, None, None]
        inner, _ = osm.finalize(
            osm.block_forward(q, k_b[:, :block_size], v_b[:, :block_size], regular, scale=scale)
        )
        gate = attention_logits(q, k_b[:, block_size:], scale=scale)[..., 0]  # [B, K, G, L]
        gate = gate.transpose(0, 3, 1, 2).reshape(B, L, N)
        later_BLN = later[None, :, None]
        part = osm.SoftmaxState(
            jnp.where(later_BLN[..., None], inner, 0.0),
            jnp.where(later_BLN, gate, MASKED_LOGIT),
            jnp.where(later_BLN, 1.0, 0.0),
        )
        return osm.merge(state, part), None

    state, _ = jax.lax.scan(step, osm.empty_state(q), (jnp.arange(nb), k_J, v_J))
    return osm.finalize(state)[0]


# The grouped softmax is not a masked softmax, so it has its own two forms rather than
# registry implementations: the materialised oracle and the block scan.
_GROUPED = {"dense": _dense_grouped, "blockwise": _blockwise_grouped}


def landmark_attention(
    q: Array, k: Array, v: Array, *, block_size: int = 50, scale: float | None = None, impl: str = "dense"
) -> Array:
    """Causal grouped-softmax attention over a landmark-augmented sequence (training form).

    Args:
      q, k, v: `[B, L, N, H]` / `[B, L, K, H]`, landmarks already inserted
        (`insert_landmarks`); L need not be a multiple of block_size + 1.
      block_size: regular tokens per block.
      scale: logit scale, default 1 / sqrt(H).
      impl: "dense" (materialised `[L, L]` grouped softmax) or "blockwise" (a scan over
        blocks merging online-softmax states; `[L, block_size + 1]` logits per step, the
        step rematerialised in the backward, which still keeps one `[B, L, N, H]` state
        per block: O(L^2 N H / (block_size + 1)) for gradients, O(L N H) forward only).

    Returns:
      `[B, L, N, H]` in q's dtype.
    """
    check_qkv(q, k, v)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"landmark attention is self-attention; got {q.shape[1]} and {k.shape[1]}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    scale = q.shape[3] ** -0.5 if scale is None else scale
    if impl not in _GROUPED:
        raise ValueError(f"landmark_attention impl must be one of {sorted(_GROUPED)}, got {impl!r}")
    return _GROUPED[impl](q, k, v, block_size, scale).astype(q.dtype)


def landmark_topk_mask(
    q: Array, k: Array, *, block_size: int = 50, top_k: int = 4, scale: float | None = None
) -> Array:
    """Retrieval mask `[B, N, T, S]` over a landmark-augmented key sequence.

    Per query head, query i keeps the `top_k` earlier complete blocks whose landmark key
    scores highest (q_i . k_landmark, ties to the earlier block) plus its own block, causally;
    landmark keys themselves are not attended. Queries are at the last T positions of the
    S keys (T = S for a whole sequence, T = 1 when decoding).
    """
    check_qkv(q, k, k)
    B, T, N, H = q.shape
    S = k.shape[1]
    bs1 = block_size + 1
    scale = H**-0.5 if scale is None else scale
    block, lm = _structure(S, block_size)
    nb_full = S // bs1
    q_pos = np.arange(S - T, S)
    lm_k = k[:, block_size::bs1][:, :nb_full]  # [B, nb_full, K, H]
    scores = attention_logits(q, lm_k, scale=scale)  # [B, K, G, T, nb_full]
    scores = scores.reshape(B, N, T, nb_full)
    eligible = np.arange(nb_full)[None, :] < (q_pos // bs1)[:, None]  # earlier complete blocks
    scores = jnp.where(eligible, scores, -jnp.inf)
    kk = min(top_k, nb_full)
    chosen = np.zeros((B, N, T, nb_full + 1), bool)
    if kk:
        _, idx = jax.lax.top_k(scores, kk)  # [B, N, T, kk]
        picked = jnp.take_along_axis(jnp.asarray(eligible)[None, None], idx, axis=-1)
        chosen = jnp.zeros((B, N, T, nb_full + 1), bool)
        chosen = chosen.at[
            jnp.arange(B)[:, None, None, None], jnp.arange(N)[None, :, None, None],
            jnp.arange(T)[None, None, :, None], jnp.where(picked, idx, nb_full),
        ].set(True)
    block_of_key = np.minimum(block, max(nb_full - 1, 0))
    retrieved = jnp.take(jnp.asarray(chosen)[..., :nb_full], block_of_key, axis=-1)
    retrieved = retrieved & (block < nb_full)[None, None, None] & ~lm[None, None, None]
    own = (block[None, :] == (q_pos // bs1)[:, None]) & (np.arange(S)[None, :] <= q_pos[:, None])
    if nb_full == 0:
        return jnp.broadcast_to(own, (B, N, T, S))
    return (retrieved & (np.arange(S)[None, :] <= q_pos[:, None])) | own


def landmark_retrieval_attention(
    q: Array, k: Array, v: Array, *, block_size: int = 50, top_k: int = 4,
    scale: float | None = None, impl: str = "dense", **impl_options,
) -> Array:
    """Inference-time landmark attention: softmax over own block + per-head top-k blocks.

    Shapes as `landmark_topk_mask`; `impl` any registry implementation that takes a
    boolean `mask` and positions ("dense", "blockwise", "xla"), with its `impl_options`.
    """
    mask = landmark_topk_mask(q, k, block_size=block_size, top_k=top_k, scale=scale)
    S, T = k.shape[1], q.shape[1]
    q_positions = jnp.arange(S - T, S)
    spec = AttentionSpec(causal=True, mask=mask, scale=scale, q_positions=q_positions,
                         k_positions=jnp.arange(S))
    return attend(q, k, v, spec, impl=impl, **impl_options)
