"""Memory-efficient attention in plain jnp: online softmax over key blocks, recomputing backward.

Rabe & Staats 2021 ("Self-attention Does Not Need O(n^2) Memory") and the FlashAttention
recurrence (Dao et al. 2022), written with `lax` loops instead of a kernel. Queries are cut
into blocks of `block_q`, keys into blocks of `block_k`; for each query block the softmax
state (running max m, denominator l, unnormalised output o) is merged over key blocks
(`online_softmax.merge`), so no `[T, S]` array is ever stored. The backward is a
`custom_vjp` that saves only the output and lse = m + log l and recomputes each tile:
    p = exp(s - lse),  dV += p^T dO,  dS = p * (dO V^T - delta),  delta = rowsum(dO * O) - dlse
    dQ += dS K scale,  dK += dS^T Q scale,  dBias = dS.
Memory is O(B T N H + B N block_q block_k) apart from a user-supplied dense `bias` / `mask`.

Tiles that the mask makes empty are skipped and tiles it leaves full run without the mask
(a `lax.switch` on `any` / `all` of the boolean tile), and when positions are the default
`arange` only the band of key blocks a causal / sliding-window mask can reach is iterated at
all. The forward loops in the grouped `[B, K, G, T, H]` layout of `online_softmax`. Lengths
that are not a multiple of the block sizes are padded and the padding masked.

`mask` may be an array (broadcastable to `[B, N, T, S]`) or a hashable callable
`mask(q_positions_Bt, k_positions_Bs) -> bool [B|1, N|1, t, s]` evaluated per tile on true
positions (the pattern objects in `longctx_jax.attention.patterns` are such callables), so
sparse patterns never materialise their `[T, S]` mask. Gradients do not flow into
`alibi_slopes` (they are constants of the model).
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from longctx_jax.attention import online_softmax as osm
from longctx_jax.attention.masks import AttentionMask
from longctx_jax.attention.spec import AttentionSpec, MaskFn, implementation
from longctx_jax.positional.alibi import alibi_tile_bias
from longctx_jax.typing import Array, ArrayLike


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything about a call that is Python data (hashable, a `custom_vjp` nondiff arg)."""

    causal: bool
    window: int | None
    sinks: int
    scale: float
    logit_soft_cap: float | None
    block_q: int
    block_k: int
    num_kv_heads: int
    band: bool
    mask_fn: MaskFn | None


class _TileInputs(NamedTuple):
    """Non-differentiable per-call arrays, already padded to whole blocks."""

    q_pos: Array  # [B, Tp] int
    k_pos: Array  # [B, Sp] int
    k_valid: Array  # [Sp] bool, False on padding
    q_seg: Array | None  # [B, Tp]
    k_seg: Array | None  # [B, Sp]
    mask: Array | None  # [m0, mn, Tp, Sp] bool
    slopes: Array | None  # [N] float32


def _slice(x: Array, start, size: int, axis: int) -> Array:
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _tile_allowed(st: _Static, tiles: _TileInputs, num_heads: int, qi, kj) -> Array:
    """Boolean `[B, K|1, G|1, bq, bk]` tile of the full mask."""
    bq, bk = st.block_q, st.block_k
    qp = _slice(tiles.q_pos, qi * bq, bq, 1)
    kp = _slice(tiles.k_pos, kj * bk, bk, 1)
    ok = AttentionMask(st.causal, st.window, st.sinks).allowed(qp[:, :, None], kp[:, None, :])
    ok = ok & _slice(tiles.k_valid, kj * bk, bk, 0)[None, None, :]
    if tiles.q_seg is not None:
        qs = _slice(tiles.q_seg, qi * bq, bq, 1)
        ks = _slice(tiles.k_seg, kj * bk, bk, 1)
        ok = ok & (qs[:, :, None] == ks[:, None, :])
    ok = ok[:, None, None]
    if tiles.mask is not None:
        m = jax.lax.dynamic_slice(
            tiles.mask, (0, 0, qi * bq, kj * bk), tiles.mask.shape[:2] + (bq, bk)
        )
        ok = ok & osm.group_heads(m, num_heads, st.num_kv_heads)
    if st.mask_fn is not None:
        m = jnp.asarray(st.mask_fn(qp, kp), bool)
        m = m.reshape((1,) * (4 - m.ndim) + m.shape)
        ok = ok & osm.group_heads(m, num_heads, st.num_kv_heads)
    return ok


def _tile_bias(st: _Static, tiles: _TileInputs, bias: Array | None, qi, kj) -> Array | None:
    """Additive bias tile `[b, N|1, bq, bk]` float32 (user bias + ALiBi), or None."""
    bq, bk = st.block_q, st.block_k
    out = None
    if bias is not None:
        out = jax.lax.dynamic_slice(bias, (0, 0, qi * bq, kj * bk), bias.shape[:2] + (bq, bk))
    if tiles.slopes is not None:
        qp = _slice(tiles.q_pos, qi * bq, bq, 1)
        kp = _slice(tiles.k_pos, kj * bk, bk, 1)
        alibi = alibi_tile_bias(tiles.slopes[None, :, None, None], qp[:, None, :, None], kp[:, None, None, :])
        out = alibi if out is None else out + alibi
    return out


def _key_band(st: _Static, qi, num_k_blocks: int):
    """Key blocks [lo, hi) that query block qi can reach under default positions."""
    lo, hi = 0, num_k_blocks
    if not st.band:
        return lo, hi
    q_first = qi * st.block_q
    q_last = q_first + st.block_q - 1
    if st.causal:
        hi = jnp.minimum(num_k_blocks, q_last // st.block_k + 1)
    if st.window is not None and not st.sinks:
        lo = jnp.maximum(0, (q_first - st.window + 1) // st.block_k)
        if not st.causal:
            hi = jnp.minimum(num_k_blocks, (q_last + st.window - 1) // st.block_k + 1)
    return lo, hi


def _query_band(st: _Static, kj, num_q_blocks: int):
    """Query blocks [lo, hi) that can reach key block kj under default positions."""
    lo, hi = 0, num_q_blocks
    if not st.band:
        return lo, hi
    k_first = kj * st.block_k
    k_last = k_first + st.block_k - 1
    if st.causal:
        lo = jnp.minimum(num_q_blocks, k_first // st.block_q)
    if st.window is not None and not st.sinks:
        hi = jnp.minimum(num_q_blocks, (k_last + st.window - 1) // st.block_q + 1)
        if not st.causal:
            lo = jnp.maximum(0, (k_first - st.window + 1) // st.block_q)
    return lo, hi


def _forward(st: _Static, q, k, v, bias, tiles: _TileInputs) -> tuple[Array, Array]:
    B, Tp, N, H = q.shape
    nq, nk = Tp // st.block_q, k.shape[1] // st.block_k
    q_BKGTH = osm.to_grouped(q, st.num_kv_heads)
    k_BKSH, v_BKSH = osm.kv_to_grouped(k), osm.kv_to_grouped(v)

    def one_query_block(qi):
        q_blk = _slice(q_BKGTH, qi * st.block_q, st.block_q, 3)

        def body(kj, state):
            allowed = _tile_allowed(st, tiles, N, qi, kj)

            def update(state, tile_allowed):
                k_blk = _slice(k_BKSH, kj * st.block_k, st.block_k, 2)
                v_blk = _slice(v_BKSH, kj * st.block_k, st.block_k, 2)
                tile_bias = _tile_bias(st, tiles, bias, qi, kj)
                part = osm.grouped_block_forward(
                    q_blk, k_blk, v_blk, tile_allowed, scale=st.scale, logit_soft_cap=st.logit_soft_cap,
                    bias=None if tile_bias is None else osm.group_heads(tile_bias, N, st.num_kv_heads),
                )
                return osm.merge(state, part)

            # 0: empty tile, skipped; 1: partly masked; 2: full, no mask to apply.
            kind = jnp.where(jnp.all(allowed), 2, jnp.where(jnp.any(allowed), 1, 0))
            return jax.lax.switch(
                kind, [lambda s: s, lambda s: update(s, allowed), lambda s: update(s, None)], state
            )

        lo, hi = _key_band(st, qi, nk)
        return osm.finalize(jax.lax.fori_loop(lo, hi, body, osm.empty_state(q_blk)))

    out_QBKGtH, lse_QBKGt = jax.lax.map(one_query_block, jnp.arange(nq))
    Q, _, K, G, t, _ = out_QBKGtH.shape
    out_BKGTH = out_QBKGtH.transpose(1, 2, 3, 0, 4, 5).reshape(B, K, G, Q * t, H)
    lse_BKGT = lse_QBKGt.transpose(1, 2, 3, 0, 4).reshape(B, K, G, Q * t)
    return osm.from_grouped(out_BKGTH, lse_BKGT)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention_core(st: _Static, q, k, v, bias, tiles: _TileInputs) -> tuple[Array, Array]:
    return _forward(st, q, k, v, bias, tiles)


def _core_fwd(st, q, k, v, bias, tiles):
    out, lse = _forward(st, q, k, v, bias, tiles)
    return (out, lse), (q, k, v, bias, tiles, out, lse)


def _core_bwd(st: _Static, res, cotangents):
    q, k, v, bias, tiles, out, lse = res
    d_out, d_lse = cotangents
    B, Tp, N, H = q.shape
    K = k.shape[2]
    bq, bk = st.block_q, st.block_k
    nq, nk = Tp // bq, k.shape[1] // bk
    # d lse / d s = p, so an lse cotangent enters exactly like -delta.
    delta = osm.output_delta(out, d_out) - d_lse.astype(jnp.float32)

    def one_key_block(carry, kj):
        k_blk = _slice(k, kj * bk, bk, 1)
        v_blk = _slice(v, kj * bk, bk, 1)

        def body(qi, c):
            allowed = _tile_allowed(st, tiles, N, qi, kj)

            def update(c):
                dq_acc, dk_j, dv_j, dbias_acc = c
                tile_bias = _tile_bias(st, tiles, bias, qi, kj)
                bias_KG = None
                if tile_bias is not None:
                    tb = jnp.broadcast_to(tile_bias, (tile_bias.shape[0], N, bq, bk))
                    bias_KG = osm.group_heads(tb, N, K)
                dq_t, dk_t, dv_t, dlogits = osm.block_backward(
                    _slice(q, qi * bq, bq, 1), k_blk, v_blk,
                    _slice(d_out, qi * bq, bq, 1), _slice(lse, qi * bq, bq, 1),
                    _slice(delta, qi * bq, bq, 1), allowed,
                    scale=st.scale, bias=bias_KG, logit_soft_cap=st.logit_soft_cap,
                )
                dq_acc = jax.lax.dynamic_update_slice_in_dim(
                    dq_acc, _slice(dq_acc, qi * bq, bq, 1) + dq_t, qi * bq, axis=1
                )
                if dbias_acc is not None:
                    d_bn = dlogits.reshape(B, N, bq, bk)
                    if bias.shape[0] == 1:
                        d_bn = jnp.sum(d_bn, axis=0, keepdims=True)
                    if bias.shape[1] == 1:
                        d_bn = jnp.sum(d_bn, axis=1, keepdims=True)
                    start = (0, 0, qi * bq, kj * bk)
                    old = jax.lax.dynamic_slice(dbias_acc, start, d_bn.shape)
                    dbias_acc = jax.lax.dynamic_update_slice(dbias_acc, old + d_bn, start)
                return dq_acc, dk_j + dk_t, dv_j + dv_t, dbias_acc

            return jax.lax.cond(jnp.any(allowed), update, lambda c: c, c)

        dq_acc, dbias_acc = carry
        zeros_kv = jnp.zeros((B, bk, K, H), jnp.float32)
        lo, hi = _query_band(st, kj, nq)
        dq_acc, dk_j, dv_j, dbias_acc = jax.lax.fori_loop(
            lo, hi, body, (dq_acc, zeros_kv, zeros_kv, dbias_acc)
        )
        return (dq_acc, dbias_acc), (dk_j, dv_j)

    dbias0 = None if bias is None else jnp.zeros(bias.shape, jnp.float32)
    (dq, dbias), (dk_J, dv_J) = jax.lax.scan(
        one_key_block, (jnp.zeros((B, Tp, N, H), jnp.float32), dbias0), jnp.arange(nk)
    )
    dk = dk_J.transpose(1, 0, 2, 3, 4).reshape(k.shape)
    dv = dv_J.transpose(1, 0, 2, 3, 4).reshape(v.shape)
    if dbias is not None:
        dbias = dbias.astype(bias.dtype)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dbias, None


_attention_core.defvjp(_core_fwd, _core_bwd)


def _pad_to(x: Array, length: int, axis: int, mode: str = "constant") -> Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    if mode == "edge" and x.shape[axis] == 0:
        mode = "constant"
    return jnp.pad(x, pad, mode=mode)


def _as_4d(x: ArrayLike, T: int, S: int, pad_T: int, pad_S: int, fill: Any) -> Array:
    """Broadcastable `[.., .., T|1, S|1]` array to `[b, n, pad_T, pad_S]`, padded with fill."""
    x = jnp.asarray(x)
    if x.ndim > 4:
        raise ValueError(f"bias/mask must broadcast to [B, N, T, S], got shape {x.shape}")
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)
    x = jnp.broadcast_to(x, x.shape[:2] + (T, S))
    pad = [(0, 0), (0, 0), (0, pad_T - T), (0, pad_S - S)]
    return jnp.pad(x, pad, constant_values=fill)


def _prepare(q: Array, k: Array, v: Array, spec: AttentionSpec, block_q: int, block_k: int):
    """Static options, inputs padded to whole blocks and the per-call tile inputs (spec checked)."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block_q and block_k must be positive, got {block_q}, {block_k}")
    # Blocks never larger than the (rounded-up) sequence: short inputs stay cheap.
    block_q = min(block_q, max(8, -(-T // 8) * 8))
    block_k = min(block_k, max(8, -(-S // 8) * 8))
    Tp = -(-T // block_q) * block_q
    Sp = -(-S // block_k) * block_k
    if spec.q_positions is None:
        q_pos = jnp.broadcast_to(jnp.arange(Tp, dtype=jnp.int32), (B, Tp))
    else:
        q_pos = _pad_to(jnp.broadcast_to(jnp.asarray(spec.q_positions), (B, T)), Tp, 1, "edge")
    if spec.k_positions is None:
        k_pos = jnp.broadcast_to(jnp.arange(Sp, dtype=jnp.int32), (B, Sp))
    else:
        k_pos = _pad_to(jnp.broadcast_to(jnp.asarray(spec.k_positions), (B, S)), Sp, 1, "edge")
    q_seg = k_seg = None
    if spec.segment_ids is not None:
        q_seg = jnp.broadcast_to(jnp.asarray(spec.segment_ids), (B, T))
        k_seg = q_seg
        if spec.kv_segment_ids is not None:
            k_seg = jnp.broadcast_to(jnp.asarray(spec.kv_segment_ids), (B, S))
        q_seg, k_seg = _pad_to(q_seg, Tp, 1, "edge"), _pad_to(k_seg, Sp, 1, "edge")
    mask_fn = spec.mask if callable(spec.mask) else None
    mask_arr = None
    if spec.mask is not None and mask_fn is None:
        mask_arr = _as_4d(jnp.asarray(spec.mask, bool), T, S, Tp, Sp, False)
    slopes = None if spec.alibi_slopes is None else jnp.asarray(spec.alibi_slopes, jnp.float32).reshape(N)
    tiles = _TileInputs(q_pos, k_pos, jnp.arange(Sp) < S, q_seg, k_seg, mask_arr, slopes)
    st = _Static(
        causal=spec.causal, window=spec.window, sinks=spec.sinks, scale=spec.scale_for(H),
        logit_soft_cap=None if spec.logit_soft_cap is None else float(spec.logit_soft_cap),
        block_q=block_q, block_k=block_k, num_kv_heads=K, band=spec.default_positions, mask_fn=mask_fn,
    )
    bias_p = None if spec.bias is None else _as_4d(jnp.asarray(spec.bias, jnp.float32), T, S, Tp, Sp, 0.0)
    return st, _pad_to(q, Tp, 1), _pad_to(k, Sp, 1), _pad_to(v, Sp, 1), bias_p, tiles


@implementation(name="blockwise")
def blockwise_attention_with_lse(
    q: Array, k: Array, v: Array, spec: AttentionSpec, *, block_q: int = 512, block_k: int = 512
) -> tuple[Array, Array]:
    """`blockwise_attention` that also returns lse `[B, T, N]` float32 (differentiable).

    Rows that may attend to nothing have output 0 and lse 0.
    """
    T = q.shape[1]
    st, q_p, k_p, v_p, bias_p, tiles = _prepare(q, k, v, spec, block_q, block_k)
    out, lse = _attention_core(st, q_p, k_p, v_p, bias_p, tiles)
    return out[:, :T].astype(q.dtype), lse[:, :T]


def blockwise_attention_backward(
    q: Array,
    k: Array,
    v: Array,
    out: Array,
    lse: Array,
    d_out: Array,
    d_lse: Array | None = None,
    spec: AttentionSpec | None = None,
    *,
    block_q: int = 512,
    block_k: int = 512,
) -> tuple[Array, Array, Array]:
    """(dq, dk, dv) of attention from its saved output and lse, by this module's tile recomputation.

    For kernels that compute the forward elsewhere (`longctx_jax.attention.cpu_flash`) and
    share this backward: `out` `[B, T, N, H]` and `lse` `[B, T, N]` must be what the forward
    with the same `spec` (no `bias`: its gradient is not returned) produced, `d_out` and
    `d_lse` (None: zero) their cotangents.
    """
    spec = spec or AttentionSpec()
    if spec.bias is not None:
        raise ValueError("blockwise_attention_backward returns no bias gradient; spec.bias must be None")
    spec.check(q, k, v)
    T = q.shape[1]
    st, q_p, k_p, v_p, _, tiles = _prepare(q, k, v, spec, block_q, block_k)
    Tp = q_p.shape[1]
    residuals = (q_p, k_p, v_p, None, tiles, _pad_to(out, Tp, 1), _pad_to(lse.astype(jnp.float32), Tp, 1))
    if d_lse is None:
        d_lse = jnp.zeros(lse.shape, jnp.float32)
    cotangents = (_pad_to(d_out, Tp, 1), _pad_to(d_lse.astype(jnp.float32), Tp, 1))
    dq, dk, dv, _, _ = _core_bwd(st, residuals, cotangents)
    return dq[:, :T], dk[:, : k.shape[1]], dv[:, : k.shape[1]]


@implementation(name="blockwise")
def blockwise_attention(
    q: Array, k: Array, v: Array, spec: AttentionSpec, *, block_q: int = 512, block_k: int = 512
) -> Array:
    """Memory-efficient attention with the semantics of `dense.attention`.

    Args:
      q, k, v: queries `[B, T, N, H]`, keys and values `[B, S, K, H]`, N % K == 0.
      spec: an `AttentionSpec` (or its fields as keyword arguments); every field is supported.
        A mask callable `(q_positions [B, t], k_positions [B, s]) -> bool [B|1, N|1, t, s]`
        is evaluated per tile, never materialising `[T, S]`.
      block_q, block_k: query / key tile sizes (clipped to the padded lengths).

    Returns:
      `[B, T, N, H]` in q's dtype.
    """
    return blockwise_attention_with_lse(q, k, v, spec, block_q=block_q, block_k=block_k)[0]
