"""LongNet dilated attention (Ding et al. 2023, "LongNet: Scaling Transformers to 1,000,000,000 Tokens").

One branch (w, r): cut the sequence into segments of w tokens; inside each segment keep
every r-th token starting at the head's offset o_h = h mod r (Sec. 2.2, multi-head dilated
attention), and run ordinary (causal) attention among the kept tokens. So in branch i,
query head h, the pair (q, k) is allowed iff
    q // w_i == k // w_i  and  (q mod w_i) = (k mod w_i) = o_h  (mod r_i)  [and k <= q if causal]
Several branches with geometric segment lengths and rates (w = 2048, 4096, ...;
r = 1, 2, 4, ...) are mixed by their softmax denominators s_i (Eq. 10):
    O = sum_i s_i O_i / sum_j s_j
which is the log-sum-exp weighting O = sum_i exp(lse_i - logsumexp_j lse_j) O_i, i.e. one
softmax over the union of every branch's keys, counting a key once per branch that sees it.
A query that a branch does not keep gets nothing from it. w = n, r = 1 is full attention.

Each branch gathers its kept tokens into dense `[B * segments, w / r, heads, H]` arrays
(grouped by offset, so the per-head offsets need no per-head mask) and runs any registered
implementation that returns the log-sum-exp (`dispatch.attend_with_lse`).
Keys/values are expanded to one per query head (offsets differ inside a GQA group).
"""

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from longctx_jax.attention import dispatch
from longctx_jax.attention.dense import MASKED_LOGIT
from longctx_jax.attention.dispatch import attend_with_lse
from longctx_jax.attention.spec import check_qkv
from longctx_jax.typing import Array


def _branch(q, k_N, v_N, w: int, r: int, *, causal, scale, impl, options):
    """(out `[B, T, N, H]`, lse `[B, T, N]` with MASKED_LOGIT where the branch skips the row)."""
    B, T, N, H = q.shape
    w = min(w, T)
    nseg = -(-T // w)
    Tp = nseg * w
    M = -(-w // r)
    pad = [(0, 0), (0, Tp - T), (0, 0), (0, 0)]
    q_p, k_p, v_p = (jnp.pad(x, pad).reshape(B, nseg, w, N, H) for x in (q, k_N, v_N))
    out_N = [None] * N
    lse_N = [None] * N
    for o in range(r):
        heads = [h for h in range(N) if h % r == o]
        if not heads:
            continue
        local = o + r * np.arange(M)  # kept offsets inside a segment
        valid = (local[None, :] < w) & (np.arange(nseg)[:, None] * w + local[None, :] < T)  # [nseg, M]
        take = np.minimum(local, w - 1)

        def gather(x, heads=heads, take=take):
            return x[:, :, take][:, :, :, heads].reshape(B * nseg, M, len(heads), H)

        seg_ids = np.broadcast_to(np.ones((1, M), np.int32), (B * nseg, M))
        kv_ids = np.broadcast_to(valid[None].astype(np.int32), (B, nseg, M)).reshape(B * nseg, M)
        args = (gather(q_p), gather(k_p), gather(v_p))
        out, lse = attend_with_lse(
            *args, impl=impl, causal=causal, segment_ids=seg_ids, kv_segment_ids=kv_ids, scale=scale,
            **options,
        )
        # Back to positions: position j of a segment is kept iff j >= o and (j - o) % r == 0.
        j = np.arange(w)
        kept = (j >= o) & ((j - o) % r == 0)
        m_of_j = np.clip((j - o) // r, 0, M - 1)
        out = out.reshape(B, nseg, M, len(heads), H)[:, :, m_of_j].reshape(B, Tp, len(heads), H)[:, :T]
        lse = lse.reshape(B, nseg, M, len(heads))[:, :, m_of_j].reshape(B, Tp, len(heads))[:, :T]
        kept_T = np.tile(kept, nseg)[:T]
        lse = jnp.where(kept_T[None, :, None], lse, MASKED_LOGIT)
        out = jnp.where(kept_T[None, :, None, None], out, 0.0)
        for i, h in enumerate(heads):
            out_N[h], lse_N[h] = out[:, :, i], lse[:, :, i]
    return jnp.stack(out_N, axis=2), jnp.stack(lse_N, axis=2)


def dilated_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    causal: bool = True,
    scale: float | None = None,
    impl: str = "dense",
    **impl_options,
) -> Array:
    """Multi-branch dilated self-attention, branches mixed by their softmax denominators.

    Args:
      q, k, v: `[B, T, N, H]` queries, `[B, T, K, H]` keys / values (self-attention, N % K == 0).
      segment_lengths: w_i per branch (a w_i >= T means one segment).
      dilation_rates: r_i per branch, r_i >= 1; head h keeps offset h mod r_i.
      causal: causal attention inside each segment.
      scale: logit scale, default 1 / sqrt(H).
      impl: any registry implementation with a log-sum-exp variant ("dense", "blockwise",
        "cpu_flash", or "auto"); `dispatch.attend_with_lse` runs each branch.
      **impl_options: that implementation's options (e.g. block_q / block_k for blockwise).

    Returns:
      `[B, T, N, H]` in q's dtype.
    """
    G = check_qkv(q, k, v)
    if impl != "auto":
        dispatch.entry(impl).with_lse()  # an unknown impl or one without lse fails before any work
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"dilated attention is self-attention; got T={q.shape[1]} and S={k.shape[1]}")
    if len(segment_lengths) != len(dilation_rates) or not segment_lengths:
        raise ValueError(
            f"need one dilation rate per segment length, got {segment_lengths} and {dilation_rates}"
        )
    if min(segment_lengths) < 1 or min(dilation_rates) < 1:
        raise ValueError(f"segment lengths and rates must be >= 1, got {segment_lengths}, {dilation_rates}")
    H = q.shape[3]
    scale = H**-0.5 if scale is None else scale
    k_N, v_N = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
    outs, lses = zip(
        *(
            _branch(q, k_N, v_N, w, r, causal=causal, scale=scale, impl=impl, options=impl_options)
            for w, r in zip(segment_lengths, dilation_rates, strict=True)
        ),
        strict=True,
    )
    lse_I = jnp.stack(lses)  # [branches, B, T, N]
    top = jnp.max(lse_I, axis=0)
    weights = jnp.where(lse_I > MASKED_LOGIT / 2, jnp.exp(lse_I - top), 0.0)
    total = jnp.sum(weights, axis=0)
    weights = weights / jnp.where(total == 0.0, 1.0, total)
    out = jnp.einsum("IBTN,IBTNH->BTNH", weights, jnp.stack(outs))
    return out.astype(q.dtype)
