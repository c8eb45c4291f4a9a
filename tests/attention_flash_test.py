"""Pallas flash attention (interpret mode on CPU) against the dense oracle, and its block metadata."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import dense
from longctx_jax.attention.flash import flash_attention
from longctx_jax.attention.kernels.block_metadata import EMPTY, FULL, PARTIAL, block_lists, block_states
from longctx_jax.attention.masks import AttentionMask
from longctx_jax.positional.alibi import alibi_slopes

BLOCKS = {"block_q": 16, "block_k": 16}


def _inputs(B=2, T=37, S=37, N=4, K=2, H=16, dtype=jnp.float32, seed=0):
    kq, kk, kv, kd = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(kq, (B, T, N, H), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (B, S, K, H), jnp.float32).astype(dtype)
    v = jax.random.normal(kv, (B, S, K, H), jnp.float32).astype(dtype)
    d_out = jax.random.normal(kd, (B, T, N, H), jnp.float32)
    return q, k, v, d_out


def _value_and_grads(fn, q, k, v, d_out, **kwargs):
    def loss(q, k, v):
        out = fn(q, k, v, **kwargs)
        return jnp.sum(out.astype(jnp.float32) * d_out), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def _reference(q, k, v, d_out, kwargs):
    return jax.jit(lambda q, k, v: _value_and_grads(dense.attention, q, k, v, d_out, **kwargs))(q, k, v)


def _flash(q, k, v, **kwargs):
    return flash_attention(q, k, v, **BLOCKS, **kwargs)


CASES = {
    # name: (input shapes, mask / feature kwargs)
    "causal_gqa_odd": (dict(T=37, S=37, N=4, K=2), dict()),
    "noncausal_mqa_cross": (dict(T=21, S=45, N=4, K=1), dict(causal=False)),
    "window_sinks": (dict(T=45, S=45, N=4, K=2), dict(window=9, sinks=3)),
    "window_sinks_alibi_softcap": (
        dict(T=45, S=45, N=4, K=2),
        dict(window=9, sinks=3, alibi_slopes=alibi_slopes(4), logit_soft_cap=3.0),
    ),
    "window_bidirectional": (dict(T=40, S=40, N=2, K=2, B=1), dict(causal=False, window=7)),
    "alibi_softcap": (dict(T=37, S=37, N=4, K=2), dict(alibi_slopes=alibi_slopes(4), logit_soft_cap=3.0)),
    "segments_window": (dict(T=37, S=37, N=4, K=1), dict(window=12, segment_ids="packed")),
    "positions_alibi": (dict(T=20, S=36, N=2, K=1), dict(q_positions="offset", alibi_slopes=alibi_slopes(2))),
}


def _materialise(kwargs, B, T, S):
    kwargs = dict(kwargs)
    if kwargs.get("segment_ids") == "packed":
        ids = np.repeat(np.arange(4), 10)[:T]
        kwargs["segment_ids"] = jnp.asarray(np.stack([ids, ids[::-1]])[:B])
    if kwargs.get("q_positions") == "offset":  # KV-cache style: queries are the last T keys
        kwargs["q_positions"] = jnp.broadcast_to(jnp.arange(S - T, S), (B, T))
    return kwargs


# Interpret mode compiles three kernels per case; the default suite keeps one case that
# covers GQA, odd lengths, batch > 1, window, sinks, ALiBi and soft-cap together (segments,
# K=1 and non-causal are in the fully-masked-rows test); the rest are `slow`.
DEFAULT_CASES = ("window_sinks_alibi_softcap",)


@pytest.mark.parametrize(
    "name", [n if n in DEFAULT_CASES else pytest.param(n, marks=pytest.mark.slow) for n in CASES]
)
def test_matches_dense_output_and_grads(name):
    shapes, kwargs = CASES[name]
    q, k, v, d_out = _inputs(**shapes)
    kwargs = _materialise(kwargs, q.shape[0], q.shape[1], k.shape[1])
    out, grads = jax.jit(lambda q, k, v: _value_and_grads(_flash, q, k, v, d_out, **kwargs))(q, k, v)
    want_out, want_grads = _reference(q, k, v, d_out, kwargs)
    chex.assert_shape(out, q.shape)
    chex.assert_trees_all_close(out, want_out, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(grads, want_grads, atol=1e-5, rtol=1e-5)


def test_fully_masked_rows_are_zero_with_zero_grads():
    q, k, v, d_out = _inputs(B=1, T=24, S=24, N=2, K=1)
    q_ids = jnp.asarray([[0] * 8 + [1] * 8 + [2] * 8])
    kv_ids = jnp.asarray([[0] * 12 + [1] * 12])  # no key is in segment 2
    kwargs = dict(causal=False, segment_ids=q_ids, kv_segment_ids=kv_ids)
    out, grads = _value_and_grads(_flash, q, k, v, d_out, **kwargs)  # no jit
    want_out, want_grads = _reference(q, k, v, d_out, kwargs)
    chex.assert_tree_all_finite((out, grads))
    chex.assert_trees_all_close(out[:, 16:], jnp.zeros_like(out[:, 16:]))
    chex.assert_trees_all_close(grads[0][:, 16:], jnp.zeros_like(grads[0][:, 16:]))
    chex.assert_trees_all_close(out, want_out, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(grads, want_grads, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_bfloat16_close_to_float32_reference():
    q, k, v, d_out = _inputs(T=40, S=40, N=4, K=2, H=32, dtype=jnp.bfloat16)
    kwargs = dict(window=16, sinks=2)
    out, grads = jax.jit(lambda q, k, v: _value_and_grads(_flash, q, k, v, d_out, **kwargs))(q, k, v)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    want_out, want_grads = _reference(*f32, d_out, kwargs)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    chex.assert_trees_all_close(out.astype(jnp.float32), want_out, atol=3e-2, rtol=3e-2)
    chex.assert_trees_all_close(
        tuple(g.astype(jnp.float32) for g in grads), want_grads, atol=6e-2, rtol=6e-2
    )


def test_rejects_bias_and_bad_blocks():
    q, k, v, _ = _inputs(B=1, T=16, S=16, N=2, K=1)
    with pytest.raises(ValueError, match="bias"):
        flash_attention(q, k, v, bias=jnp.zeros((1, 2, 16, 16)))
    with pytest.raises(ValueError, match="power of two"):
        flash_attention(q, k, v, block_q=24)
    with pytest.raises(ValueError, match="alibi_slopes"):
        flash_attention(q, k, v, alibi_slopes=np.ones(3, np.float32))


def _brute_force_states(mask, T, S, bq, bk):
    """Tile states from every (query, key) pair, straight from the mask's definition."""
    qi, kj = np.arange(T)[:, None], np.arange(S)[None, :]
    allowed = (kj <= qi) if mask.causal else np.ones((T, S), bool)
    if mask.window is not None:
        allowed = allowed & ((np.abs(qi - kj) < mask.window) | (kj < mask.sinks))
    nq, nk = -(-T // bq), -(-S // bk)
    states = np.zeros((nq, nk), np.int8)
    for i, j in itertools.product(range(nq), range(nk)):
        tile = allowed[i * bq : (i + 1) * bq, j * bk : (j + 1) * bk]
        padded = (j + 1) * bk > S
        states[i, j] = FULL if tile.all() and not padded else PARTIAL if tile.any() else EMPTY
    return states


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window,sinks", [(None, 0), (None, 5), (1, 0), (7, 0), (16, 0), (9, 3), (20, 17)])
@pytest.mark.parametrize("T,S,bq,bk", [(64, 64, 16, 16), (50, 37, 16, 8), (33, 70, 8, 16)])
def test_block_states_match_brute_force(causal, window, sinks, T, S, bq, bk):
    mask = AttentionMask(causal=causal, window=window, sinks=sinks)
    np.testing.assert_array_equal(block_states(mask, T, S, bq, bk), _brute_force_states(mask, T, S, bq, bk))


def test_window_lists_only_o_n_w_blocks():
    n, w, b = 4096, 128, 64
    mask = AttentionMask(causal=True, window=w, sinks=4)
    lists = block_lists(mask, n, n, b, b)
    nq = n // b
    listed = int(lists.kv_count.sum())
    # Each query block needs the keys [q0 - w + 1, q0 + b - 1]: at most w / b + 2 blocks,
    # plus the one sink block.
    assert listed <= nq * (w // b + 2) + nq
    assert listed < nq * (nq + 1) // 2 / 5  # far below causal's n^2 / (2 b^2)
    assert int(lists.q_count.sum()) == listed
    assert lists.kv_index.shape[1] <= w // b + 3
    states = block_states(mask, n, n, b, b)
    for i in range(nq):
        listed_blocks = lists.kv_index[i, : lists.kv_count[i]]
        np.testing.assert_array_equal(listed_blocks, np.flatnonzero(states[i] != EMPTY))
        np.testing.assert_array_equal(lists.kv_full[i, : lists.kv_count[i]], states[i, listed_blocks] == FULL)


def test_skipped_tiles_are_never_read():
    # Keys 0..15 (key block 0) are NaN. With a window of 8, query blocks 2 and 3 (rows 32..63)
    # list no tile of key block 0; reading it even under a mask would give 0 * NaN = NaN.
    q, k, v, _ = _inputs(B=1, T=64, S=64, N=2, K=1)
    mask = AttentionMask(causal=True, window=8)
    lists = block_lists(mask, 64, 64, 16, 16)
    assert all(0 not in lists.kv_index[i, : lists.kv_count[i]] for i in (2, 3))
    poisoned_v = v.at[:, :16].set(jnp.nan)
    poisoned_k = k.at[:, :16].set(jnp.nan)
    out = _flash(q, poisoned_k, poisoned_v, window=8)
    want = dense.attention(q, k, v, window=8)
    chex.assert_tree_all_finite(out[:, 32:])
    chex.assert_trees_all_close(out[:, 32:], want[:, 32:], atol=1e-5, rtol=1e-5)
