"""The oracle `dense.attention` against `jax.nn.dot_product_attention` and a NumPy reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import dense
from longctx_jax.positional.alibi import alibi_slopes

B, T, N, K, H = 2, 13, 4, 2, 8


def _qkv(seed=0, T=T, S=T, N=N, K=K):
    r = np.random.default_rng(seed)
    q = r.normal(size=(B, T, N, H)).astype(np.float32)
    k = r.normal(size=(B, S, K, H)).astype(np.float32)
    v = r.normal(size=(B, S, K, H)).astype(np.float32)
    return q, k, v


def numpy_attention(q, k, v, allowed_BNTS, bias_BNTS=None, cap=None, scale=None):
    """Float64 loops over batch and head; independent of the package."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    Bq, Tq, Nq, Hq = q.shape
    G = Nq // k.shape[2]
    scale = Hq**-0.5 if scale is None else scale
    out = np.zeros(q.shape)
    for b in range(Bq):
        for n in range(Nq):
            s = q[b, :, n] @ k[b, :, n // G].T * scale
            if cap is not None:
                s = cap * np.tanh(s / cap)
            if bias_BNTS is not None:
                s = s + bias_BNTS[b, n]
            for t in range(Tq):
                ok = allowed_BNTS[b, n, t]
                if not ok.any():
                    continue
                w = np.exp(s[t, ok] - s[t, ok].max())
                out[b, t, n] = (w / w.sum()) @ v[b, ok, n // G]
    return out


def brute_allowed(T, S, causal=True, window=None, sinks=0, q_pos=None, k_pos=None):
    q_pos = range(T) if q_pos is None else q_pos
    k_pos = range(S) if k_pos is None else k_pos
    m = np.zeros((T, S), bool)
    for i, qp in enumerate(q_pos):
        for j, kp in enumerate(k_pos):
            ok = (not causal) or kp <= qp
            if window is not None:
                ok = ok and (abs(qp - kp) < window or kp < sinks)
            m[i, j] = ok
    return m


CASES = {
    "causal": dict(causal=True),
    "full": dict(causal=False),
    "window": dict(causal=True, window=4),
    "window_bidir": dict(causal=False, window=3),
    "sinks": dict(causal=True, window=3, sinks=2),
}


@pytest.mark.parametrize(
    "name,use_jit", [(name, True) for name in sorted(CASES)] + [("sinks", False)]
)
def test_masks_match_numpy(name, use_jit):
    kw = CASES[name]
    q, k, v = _qkv()
    fn = jax.jit(lambda *a: dense.attention(*a, **kw)) if use_jit else (lambda *a: dense.attention(*a, **kw))
    allowed = np.broadcast_to(brute_allowed(T, T, **kw), (B, N, T, T))
    chex.assert_trees_all_close(fn(q, k, v), numpy_attention(q, k, v, allowed).astype(np.float32), atol=1e-5)


@pytest.mark.parametrize("name", ["causal", "full", "window", "window_bidir"])
def test_masks_match_jax_nn(name):
    kw = CASES[name]
    q, k, v = _qkv(1)
    window = kw.get("window")
    local = None if window is None else (window - 1, 0 if kw["causal"] else window - 1)
    ref = jax.nn.dot_product_attention(
        q, k, v, is_causal=kw["causal"], local_window_size=local, implementation="xla"
    )
    chex.assert_trees_all_close(dense.attention(q, k, v, **kw), ref, atol=1e-5)


def test_bias_alibi_mask_softcap_match_numpy_and_jax_nn():
    q, k, v = _qkv(2)
    r = np.random.default_rng(3)
    bias = r.normal(size=(1, N, T, T)).astype(np.float32)
    mask = r.random((B, 1, T, T)) < 0.7
    slopes = alibi_slopes(N)
    pos = np.arange(T)
    alibi = -slopes[:, None, None] * np.abs(pos[:, None] - pos[None, :])
    out = dense.attention(
        q, k, v, causal=False, bias=bias, alibi_slopes=slopes, mask=mask, logit_soft_cap=3.0
    )
    allowed = np.broadcast_to(mask, (B, N, T, T))
    ref = numpy_attention(q, k, v, allowed, np.broadcast_to(bias + alibi[None], (B, N, T, T)), cap=3.0)
    chex.assert_trees_all_close(out, ref.astype(np.float32), atol=1e-5)
    # jax.nn has no soft-cap: compare the rest, masking rows that keep at least one key.
    out = dense.attention(q, k, v, causal=True, bias=bias, mask=mask)
    ref = jax.nn.dot_product_attention(
        q, k, v, bias=jnp.asarray(bias), mask=jnp.asarray(mask), is_causal=True, implementation="xla"
    )
    keep = (mask & np.tril(np.ones((T, T), bool))).any(-1)[:, 0, :, None, None]
    chex.assert_trees_all_close(jnp.where(keep, out, 0), jnp.where(keep, ref, 0), atol=1e-5)


def test_segments_positions_and_cross_lengths_match_numpy():
    S = 9
    q, k, v = _qkv(4, T=T, S=S)
    seg_q = np.repeat(np.array([[0] * 7 + [1] * 6, [0] * 3 + [1] * 10]), 1, 0)
    seg_k = np.array([[0] * 5 + [1] * 4, [0] * 2 + [1] * 7])
    q_pos = np.arange(T)[None] + np.array([[4], [0]])
    k_pos = np.broadcast_to(np.arange(S) * 2, (B, S))
    out = dense.attention(
        q, k, v, causal=True, window=6, segment_ids=seg_q, kv_segment_ids=seg_k,
        q_positions=q_pos, k_positions=k_pos,
    )
    allowed = np.zeros((B, N, T, S), bool)
    for b in range(B):
        m = brute_allowed(T, S, window=6, q_pos=q_pos[b], k_pos=k_pos[b])
        allowed[b] = m & (seg_q[b][:, None] == seg_k[b][None, :])
    chex.assert_trees_all_close(out, numpy_attention(q, k, v, allowed).astype(np.float32), atol=1e-5)


@pytest.mark.parametrize("n_heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_gqa_matches_repeated_kv_and_jax_nn(n_heads, kv_heads):
    q, k, v = _qkv(5, N=n_heads, K=kv_heads)
    G = n_heads // kv_heads
    fn = jax.jit(dense.attention)
    out = fn(q, k, v)
    mha = fn(q, np.repeat(k, G, axis=2), np.repeat(v, G, axis=2))
    chex.assert_trees_all_close(out, mha, atol=1e-6)
    chex.assert_trees_all_close(out, jax.nn.dot_product_attention(q, k, v, is_causal=True), atol=1e-5)


def test_fully_masked_rows_are_zero_with_zero_grads():
    q, k, v = _qkv(6)
    mask = np.ones((1, 1, T, T), bool)
    mask[..., 3, :] = False
    seg = np.zeros((B, T), np.int32)
    kv_seg = np.ones((B, T), np.int32)
    kv_seg[0, :2] = 0  # batch 1: every row masked; batch 0: rows see keys 0, 1 only

    @jax.jit
    def f(q, k, v):
        return dense.attention(q, k, v, causal=False, mask=mask, segment_ids=seg, kv_segment_ids=kv_seg)

    out = f(q, k, v)
    chex.assert_tree_all_finite(out)
    np.testing.assert_array_equal(np.asarray(out[1]), 0.0)
    np.testing.assert_array_equal(np.asarray(out[0, 3]), 0.0)
    dq, dk, dv = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2)))(q, k, v)
    chex.assert_tree_all_finite((dq, dk, dv))
    np.testing.assert_array_equal(np.asarray(dq[1]), 0.0)
    np.testing.assert_array_equal(np.asarray(dq[0, 3]), 0.0)
    np.testing.assert_array_equal(np.asarray(dk[1]), 0.0)
    np.testing.assert_array_equal(np.asarray(dv[0, 2:]), 0.0)


def test_gradients_match_jax_nn():
    q, k, v = _qkv(7)
    bias = np.random.default_rng(8).normal(size=(1, N, T, T)).astype(np.float32)

    def loss(fn):
        return lambda q, k, v, b: jnp.sum(jnp.sin(fn(q, k, v, b)))

    ours = jax.jit(
        jax.grad(loss(lambda q, k, v, b: dense.attention(q, k, v, bias=b, window=5)), argnums=(0, 1, 2, 3))
    )
    ref = jax.grad(
        loss(lambda q, k, v, b: jax.nn.dot_product_attention(
            q, k, v, bias=b, is_causal=True, local_window_size=(4, 0), implementation="xla")),
        argnums=(0, 1, 2, 3),
    )
    chex.assert_trees_all_close(ours(q, k, v, bias), ref(q, k, v, bias), atol=1e-5)


def test_bad_shapes_raise():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="multiple"):
        dense.attention(q[:, :, :3], k, v)
    with pytest.raises(ValueError, match="batch"):
        dense.attention(q[:1], k, v)
