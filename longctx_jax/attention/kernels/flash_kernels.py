"""Pallas flash-attention kernels (Dao 2023, "FlashAttention-2"): forward, dQ and dK/dV.

Layout is the package's `[B, T, N, H]` / `[B, S, K, H]`, sequence lengths padded to the
block sizes. Each program owns one query block (forward, dQ) or one key block (dK/dV)
and loops only over the tiles listed in the host metadata (`block_metadata.BlockLists`),
so EMPTY tiles are neither loaded nor computed and FULL tiles skip the mask. The whole
key (or query) sequence is given to a program as a ref and sliced inside the loop, as in
JAX's Triton attention kernel, so only visited tiles are ever read.

Per tile, with s = cap * tanh(scale * q k^T / cap) + alibi (soft-cap and ALiBi optional):
    forward:  m' = max(m, rowmax s),  p = exp(s - m'),  l' = l e^(m - m') + rowsum p,
              o' = o e^(m - m') + p v;  finally o / l and lse = m + log l
    backward: p = exp(s - lse),  dv += p^T do,  ds = p (do v^T - delta),
              dr = ds (1 - (s_cap / cap)^2) scale,  dq += dr k,  dk += dr^T q
with delta = rowsum(do * o). Masked pairs get p = 0 explicitly, so a row with no allowed
key ends with l = 0, output 0 and lse 0 (never NaN).
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from longctx_jax.attention.dense import MASKED_LOGIT
from longctx_jax.attention.kernels.gpu_plan import LaunchPlan
from longctx_jax.attention.masks import AttentionMask
from longctx_jax.positional.alibi import alibi_tile_bias


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static description of one flash-attention call (hashable: a jit/custom_vjp static)."""

    mask: AttentionMask
    q_len: int  # true T (before padding)
    kv_len: int  # true S
    block_q: int
    block_k: int
    groups: int  # G = N / K
    scale: float
    logit_soft_cap: float | None
    has_positions: bool  # explicit positions: read from refs, no block skipping
    has_segments: bool
    has_alibi: bool
    interpret: bool
    plan: LaunchPlan  # per-kernel tiles / warps / stages; block_q, block_k above are the padding unit


@dataclasses.dataclass(frozen=True)
class _TileRefs:
    """Optional per-call refs, unpacked in a fixed order."""

    q_pos: object = None
    k_pos: object = None
    q_seg: object = None
    kv_seg: object = None
    slopes: object = None


def _dot(a, b, contract_a: int, contract_b: int):
    return jax.lax.dot_general(
        a, b, (((contract_a,), (contract_b,)), ((), ())), preferred_element_type=jnp.float32
    )


def _logits(cfg: KernelConfig, q, k, slope, q_pos, k_pos):
    """Float32 logits `[bq, bk]` and the soft-capped part (for the backward's chain rule)."""
    s = _dot(q, k, 1, 1) * cfg.scale
    if cfg.logit_soft_cap is not None:
        s = cfg.logit_soft_cap * jnp.tanh(s / cfg.logit_soft_cap)
    capped = s
    if cfg.has_alibi:
        s = s + alibi_tile_bias(slope, q_pos[:, None], k_pos[None, :])
    return s, capped


def _tile_mask(cfg: KernelConfig, full, q_pos, k_pos, k_idx, q_seg, kv_seg):
    """Boolean `[bq, bk]` mask; the positional part is evaluated only in PARTIAL tiles."""
    seg_ok = None
    if cfg.has_segments:
        seg_ok = q_seg[:, None] == kv_seg[None, :]

    def positional():
        ok = cfg.mask.allowed(q_pos[:, None], k_pos[None, :]) & (k_idx < cfg.kv_len)[None, :]
        return ok if seg_ok is None else ok & seg_ok

    def unmasked():
        ones = jnp.ones((q_pos.shape[0], k_pos.shape[0]), bool)
        return ones if seg_ok is None else seg_ok

    return jax.lax.cond(full == 1, unmasked, positional)


def _q_tile_inputs(cfg: KernelConfig, aux: _TileRefs, q_start):
    """Positions and segment ids of the query tile starting at `q_start`."""
    q_slice = pl.ds(q_start, cfg.block_q)
    if cfg.has_positions:
        q_pos = aux.q_pos[q_slice]
    else:
        q_pos = q_start + jnp.arange(cfg.block_q, dtype=jnp.int32)
    q_seg = aux.q_seg[q_slice] if cfg.has_segments else None
    return q_pos, q_seg


def _k_tile_inputs(cfg: KernelConfig, aux: _TileRefs, k_start):
    k_slice = pl.ds(k_start, cfg.block_k)
    k_idx = k_start + jnp.arange(cfg.block_k, dtype=jnp.int32)
    k_pos = aux.k_pos[k_slice] if cfg.has_positions else k_idx
    kv_seg = aux.kv_seg[k_slice] if cfg.has_segments else None
    return k_pos, k_idx, kv_seg


def _unpack(cfg: KernelConfig, refs) -> tuple[_TileRefs, list]:
    refs = list(refs)
    fields = {}
    if cfg.has_positions:
        fields["q_pos"], fields["k_pos"] = refs.pop(0), refs.pop(0)
    if cfg.has_segments:
        fields["q_seg"], fields["kv_seg"] = refs.pop(0), refs.pop(0)
    if cfg.has_alibi:
        fields["slopes"] = refs.pop(0)
    return _TileRefs(**fields), refs


def forward_kernel(kv_index_ref, kv_full_ref, kv_count_ref, q_ref, k_ref, v_ref, *refs, cfg: KernelConfig):
    """One (batch, query head, query block): o `[bq, H]` and lse `[bq]`."""
    aux, (o_ref, lse_ref) = _unpack(cfg, refs)
    head, qb = pl.program_id(1), pl.program_id(2)
    slope = aux.slopes[head] if cfg.has_alibi else None
    q = q_ref[...]
    q_pos, q_seg = _q_tile_inputs(cfg, aux, qb * cfg.block_q)

    def body(t, carry):
        o, m, l = carry
        kb = kv_index_ref[qb, t]
        k_start = kb * cfg.block_k
        k = k_ref[pl.ds(k_start, cfg.block_k), :]
        v = v_ref[pl.ds(k_start, cfg.block_k), :]
        k_pos, k_idx, kv_seg = _k_tile_inputs(cfg, aux, k_start)
        s, _ = _logits(cfg, q, k, slope, q_pos, k_pos)
        ok = _tile_mask(cfg, kv_full_ref[qb, t], q_pos, k_pos, k_idx, q_seg, kv_seg)
        s = jnp.where(ok, s, MASKED_LOGIT)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.where(ok, jnp.exp(s - m_new[:, None]), 0.0)
        correction = jnp.exp(m - m_new)
        l = l * correction + jnp.sum(p, axis=1)
        o = o * correction[:, None] + _dot(p.astype(v.dtype), v, 1, 0)
        return o, m_new, l

    o = jnp.zeros((cfg.block_q, q_ref.shape[-1]), jnp.float32)
    m = jnp.full((cfg.block_q,), MASKED_LOGIT, jnp.float32)
    l = jnp.zeros((cfg.block_q,), jnp.float32)
    o, m, l = jax.lax.fori_loop(0, kv_count_ref[qb], body, (o, m, l))
    empty = l == 0.0
    l_safe = jnp.where(empty, 1.0, l)
    o_ref[...] = (o / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, 0.0, m + jnp.log(l_safe))


def _tile_grads(cfg, q, k, v, do, lse, delta, slope, ok, q_pos, k_pos):
    """p and the raw-logit gradient dr (scale and soft-cap chain rule applied) of one tile."""
    s, capped = _logits(cfg, q, k, slope, q_pos, k_pos)
    p = jnp.where(ok, jnp.exp(jnp.where(ok, s, lse[:, None]) - lse[:, None]), 0.0)
    dp = _dot(do, v, 1, 1)
    dr = p * (dp - delta[:, None])
    if cfg.logit_soft_cap is not None:
        dr = dr * (1.0 - jnp.square(capped / cfg.logit_soft_cap))
    return p, dr * cfg.scale


def dq_kernel(
    kv_index_ref, kv_full_ref, kv_count_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
    cfg: KernelConfig,
):
    """One (batch, query head, query block): dq `[bq, H]` (float32)."""
    aux, (dq_ref,) = _unpack(cfg, refs)
    head, qb = pl.program_id(1), pl.program_id(2)
    slope = aux.slopes[head] if cfg.has_alibi else None
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    q_pos, q_seg = _q_tile_inputs(cfg, aux, qb * cfg.block_q)

    def body(t, dq):
        k_start = kv_index_ref[qb, t] * cfg.block_k
        k = k_ref[pl.ds(k_start, cfg.block_k), :]
        v = v_ref[pl.ds(k_start, cfg.block_k), :]
        k_pos, k_idx, kv_seg = _k_tile_inputs(cfg, aux, k_start)
        ok = _tile_mask(cfg, kv_full_ref[qb, t], q_pos, k_pos, k_idx, q_seg, kv_seg)
        _, dr = _tile_grads(cfg, q, k, v, do, lse, delta, slope, ok, q_pos, k_pos)
        return dq + _dot(dr.astype(k.dtype), k, 1, 0)

    dq = jnp.zeros((cfg.block_q, q_ref.shape[-1]), jnp.float32)
    dq_ref[...] = jax.lax.fori_loop(0, kv_count_ref[qb], body, dq)


def dkv_kernel(
    q_index_ref, q_full_ref, q_count_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
    cfg: KernelConfig,
):
    """One (batch, KV head, key block): dk, dv `[bk, H]` (float32), summed over the G query heads.

    One loop over (listed query block, query head of the group) pairs, i -> (i // G, i % G):
    each iteration loads one head's q / dO tile, so software pipelining buffers `num_stages`
    tiles whatever G is (an unrolled loop over the group inside the loop body would buffer
    all G heads' tiles at once: shared memory growing with G).
    """
    aux, (dk_ref, dv_ref) = _unpack(cfg, refs)
    kv_head, kb = pl.program_id(1), pl.program_id(2)
    k, v = k_ref[...], v_ref[...]
    k_pos, k_idx, kv_seg = _k_tile_inputs(cfg, aux, kb * cfg.block_k)

    def body(i, carry):
        dk, dv = carry
        groups = jnp.asarray(cfg.groups, i.dtype)
        t, g = jax.lax.div(i, groups), jax.lax.rem(i, groups)  # i >= 0: no sign fix-ups
        q_start = q_index_ref[kb, t] * cfg.block_q
        q_slice = pl.ds(q_start, cfg.block_q)
        q_pos, q_seg = _q_tile_inputs(cfg, aux, q_start)
        ok = _tile_mask(cfg, q_full_ref[kb, t], q_pos, k_pos, k_idx, q_seg, kv_seg)
        q = q_ref[q_slice, g, :]
        do = do_ref[q_slice, g, :]
        lse = lse_ref[g, q_slice]
        delta = delta_ref[g, q_slice]
        slope = aux.slopes[kv_head * cfg.groups + g] if cfg.has_alibi else None
        p, dr = _tile_grads(cfg, q, k, v, do, lse, delta, slope, ok, q_pos, k_pos)
        dv = dv + _dot(p.astype(do.dtype), do, 0, 0)
        dk = dk + _dot(dr.astype(q.dtype), q, 0, 0)
        return dk, dv

    zeros = jnp.zeros((cfg.block_k, k_ref.shape[-1]), jnp.float32)
    dk, dv = jax.lax.fori_loop(0, q_count_ref[kb] * cfg.groups, body, (zeros, zeros))
    dk_ref[...] = dk
    dv_ref[...] = dv
