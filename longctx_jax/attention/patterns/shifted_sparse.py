"""Shifted sparse attention (S2-Attn) of LongLoRA, a training-only attention pattern.

LongLoRA (Chen et al. 2023, "LongLoRA: Efficient Fine-tuning of Long-Context Large Language
Models", Sec. 3.2): split the sequence into groups of G tokens and let each token attend
(causally) only within its group; in half of the heads shift the groups by G / 2 so that
information flows between neighbouring groups:

    heads 0 .. N - N//2 - 1:   group(i) = floor(i / G)
    heads N - N//2 .. N - 1:   group(i) = floor((i + G/2) / G)      (N//2 shifted heads)
    allowed(i, j) = j <= i  and  group(i) == group(j)  and  doc(i) == doc(j)

Groups are cut by array index (as in the paper, which rolls the shifted heads' tokens by
-G/2); the first G/2 tokens of a shifted head form a group of their own instead of wrapping
around to the end of the sequence. Each half runs through the registry's `attend` with the
groups folded into the segment ids, so any implementation that takes segment ids runs it.
The model is trained with S2-Attn and evaluated with full attention (the paper's recipe),
so the pattern is refused by the KV-cache paths and by evaluation.

Reproduced by `configs/finetune_smollm2.py:longlora`.
"""

import jax.numpy as jnp

from longctx_jax.attention.dispatch import attend
from longctx_jax.attention.spec import AttentionSpec
from longctx_jax.typing import Array


def shifted_group_ids(doc_ids_BT: Array | None, seq_len: int, group_size: int, shift: int) -> Array:
    """Segment ids `[B or 1, T]` (int32) equal exactly for tokens of one document and one group.

    Args:
      doc_ids_BT: packed-document ids, or None (one document).
      seq_len: T.
      group_size: G.
      shift: 0 or G / 2: tokens i and j share a group iff floor((i + shift) / G) agree.
    """
    groups_T = (jnp.arange(seq_len, dtype=jnp.int32) + shift) // group_size
    num_groups = (seq_len + shift) // group_size + 1
    if doc_ids_BT is None:
        return groups_T[None, :]
    return jnp.asarray(doc_ids_BT, jnp.int32) * num_groups + groups_T[None, :]


def shifted_sparse_attention(q_BTNH: Array, k_BTKH: Array, v_BTKH: Array, spec: AttentionSpec, impl: str,
                             *, group_size: int) -> Array:
    """S2-Attn of self-attention inputs: `[B, T, N, H]` out.

    Args:
      q_BTNH, k_BTKH, v_BTKH: queries `[B, T, N, H]`, keys and values `[B, T, K, H]` of the
        same tokens (training-time self-attention).
      spec: the layer's spec; its `segment_ids` (packed documents) are kept, its causal mask,
        scale and soft-cap apply within each group.
      impl: the attention implementation each half runs with.
      group_size: G, a divisor of T, even.

    Raises:
      ValueError: T not a multiple of G, or keys of another length than queries.
    """
    B, T, N, H = q_BTNH.shape
    K = k_BTKH.shape[2]
    if k_BTKH.shape[1] != T:
        raise ValueError(f"S2-Attn is self-attention; got {T} queries and {k_BTKH.shape[1]} keys")
    if T % group_size:
        raise ValueError(f"S2-Attn group_size {group_size} must divide the sequence length {T}")
    n_plain = N - N // 2
    if N % 2 or K % 2:  # the halves of the query heads do not split the KV heads: give each its own
        k_BTKH, v_BTKH = (jnp.repeat(x, N // K, axis=2) for x in (k_BTKH, v_BTKH))
        K = N
    k_plain = n_plain * K // N
    doc_ids = spec.segment_ids
    outs = []
    for (q_lo, q_hi, k_lo, k_hi), shift in (((0, n_plain, 0, k_plain), 0),
                                            ((n_plain, N, k_plain, K), group_size // 2)):
        q = q_BTNH[:, :, q_lo:q_hi]
        k, v = (x[:, :, k_lo:k_hi] for x in (k_BTKH, v_BTKH))
        ids = jnp.broadcast_to(shifted_group_ids(doc_ids, T, group_size, shift), (B, T))
        outs.append(attend(q, k, v, spec.replace(segment_ids=ids, kv_segment_ids=None), impl=impl))
    return jnp.concatenate(outs, axis=2)
