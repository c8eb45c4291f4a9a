"""TPU path: the same mask through JAX's splash attention (Mosaic), not the Triton kernels.

Splash attention takes a static block-sparse mask over array indices, so only what maps
onto its masks is accepted: causal (`CausalMask`), sliding window (`LocalMask`, whose
window bounds are inclusive: q - left <= k <= q + right, so left = window - 1 and
right = 0 causal / window - 1 bidirectional), segment ids, soft-cap and GQA (the MQA
kernel vmapped over KV heads). Sinks, ALiBi, explicit positions and lengths that are not
a multiple of the block size raise ValueError; use `impl="blockwise"` for those on TPU.
Splash does not scale logits, so q is pre-scaled. Rows with no allowed key are undefined
in splash (see `SegmentIds`), unlike the Triton kernel.
"""

import jax
import jax.numpy as jnp

from longctx_jax.attention.masks import AttentionMask
from longctx_jax.typing import Array


def splash_attention(
    q_BTNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    mask: AttentionMask,
    *,
    scale: float,
    segment_ids: Array | None,
    kv_segment_ids: Array | None,
    logit_soft_cap: float | None,
    block_q: int,
    block_k: int,
) -> Array:
    """`[B, T, N, H]` attention on TPU via `splash_attention.make_splash_mqa_single_device`."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    B, T, N, H = q_BTNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    G = N // K
    bq, bk = min(block_q, T), min(block_k, S)
    if T % bq or S % bk:
        raise ValueError(
            f"splash attention needs T={T} and S={S} to be multiples of the block sizes ({bq}, {bk})"
        )
    if mask.sinks and mask.window is not None:
        raise ValueError(f"splash attention has no attention-sink mask (sinks={mask.sinks}); use blockwise")
    if mask.window is None:
        head_mask = splash.CausalMask((T, S)) if mask.causal else splash.FullMask((T, S))
    else:
        right = 0 if mask.causal else mask.window - 1
        head_mask = splash.LocalMask((T, S), window_size=(mask.window - 1, right), offset=0)
    sizes = splash.BlockSizes(
        block_q=bq, block_kv=bk, block_kv_compute=bk,
        block_q_dkv=bq, block_kv_dkv=bk, block_kv_dkv_compute=bk,
        block_q_dq=bq, block_kv_dq=bk,
    )
    kernel = splash.make_splash_mqa_single_device(
        mask=splash.MultiHeadMask([head_mask] * G),
        block_sizes=sizes,
        attn_logits_soft_cap=logit_soft_cap,
    )
    q_BKGTH = (q_BTNH * scale).astype(q_BTNH.dtype).reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4)
    k_BKSH = k_BSKH.transpose(0, 2, 1, 3)
    v_BKSH = v_BSKH.transpose(0, 2, 1, 3)
    if segment_ids is None:
        per_head = jax.vmap(kernel, in_axes=(0, 0, 0))
        out_BKGTH = jax.vmap(per_head)(q_BKGTH, k_BKSH, v_BKSH)
    else:
        kv_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
        segments = splash.SegmentIds(q=jnp.asarray(segment_ids, jnp.int32), kv=jnp.asarray(kv_ids, jnp.int32))
        per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))
        out_BKGTH = jax.vmap(per_head, in_axes=(0, 0, 0, 0))(q_BKGTH, k_BKSH, v_BKSH, segments)
    return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)
