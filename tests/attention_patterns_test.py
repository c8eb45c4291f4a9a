"""Attention patterns: brute-force masks from Python loops, NumPy references, and
reference (dense) vs blockwise agreement in outputs and gradients."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import dense
from longctx_jax.attention import patterns as P
from longctx_jax.attention.blockwise import blockwise_attention
from longctx_jax.attention.masks import AttentionMask

B, T, N, K, H = 2, 29, 4, 2, 8
TOL = 1e-5


def _qkv(seed=0, T=T, N=N, K=K):
    r = np.random.default_rng(seed)
    return tuple(
        jnp.asarray(r.normal(size=(B, T, n, H)), jnp.float32) for n in (N, K, K)
    )


# ---------------------------------------------------------------- exact allowed pairs


@pytest.mark.parametrize("causal,window,sinks", [(True, 5, 0), (False, 4, 0), (True, 6, 4)])
def test_sliding_window_and_sinks_allowed_pairs(causal, window, sinks):
    kw = P.streaming_llm(window, sinks) if sinks else P.sliding_window(window, causal)
    got = np.asarray(AttentionMask(**kw).allowed(np.arange(T)[:, None], np.arange(T)[None, :]))
    want = np.zeros((T, T), bool)
    for q, k in itertools.product(range(T), range(T)):
        if causal:
            want[q, k] = k <= q and (q - k < window or k < sinks)
        else:
            want[q, k] = abs(q - k) < window
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("causal", [False, True])
def test_longformer_allowed_pairs(causal):
    pattern = P.Longformer(window=3, global_positions=(0, 11, 28), causal=causal)
    got = np.asarray(P.materialise(pattern, 1, T, T))[0, 0]
    want = np.zeros((T, T), bool)
    for q, k in itertools.product(range(T), range(T)):
        ok = abs(q - k) < 3 or q in (0, 11, 28) or k in (0, 11, 28)
        want[q, k] = ok and (k <= q or not causal)
    np.testing.assert_array_equal(got, want)


def test_bigbird_allowed_pairs_and_random_blocks():
    seq, block, heads = 150, 8, 3  # 19 blocks, the last one partial
    pattern = P.BigBird(seq_len=seq, block=block, num_random_blocks=3, num_heads=heads, seed=7)
    nb = 19
    rand = pattern.random_blocks()
    assert len(rand) == heads and all(len(rows) == nb for rows in rand)
    for h, i in itertools.product(range(heads), range(nb)):
        cols = rand[h][i]
        if i in (0, nb - 1):
            assert cols == ()
        else:
            assert len(cols) == 3 and len(set(cols)) == 3
            assert all(c not in (0, nb - 1) and abs(c - i) > 1 for c in cols)
    got = np.asarray(P.materialise(pattern, 1, seq, seq))[0]
    want = np.zeros((heads, seq, seq), bool)
    for h, q, k in itertools.product(range(heads), range(seq), range(seq)):
        i, j = q // block, k // block
        want[h, q, k] = abs(i - j) <= 1 or i in (0, nb - 1) or j in (0, nb - 1) or j in rand[h][i]
    np.testing.assert_array_equal(got, want)
    # Seeded and reproducible; another seed gives another layout; heads differ.
    again = P.BigBird(seq_len=seq, block=block, num_random_blocks=3, num_heads=heads, seed=7)
    assert again.random_blocks() == rand
    assert P.BigBird(seq_len=seq, block=block, num_heads=heads, seed=8).random_blocks() != rand
    assert rand[0] != rand[1]
    assert P.BigBird(seq_len=4096).num_blocks == 64  # defaults: block 64, r = 3, 3 + 2 blocks


def test_bigbird_rejects_even_window():
    with pytest.raises(ValueError, match="odd"):
        P.BigBird(seq_len=64, num_window_blocks=2)


# ---------------------------------------------------------------- LongNet dilated


def numpy_dilated(q, k, v, segment_lengths, rates, causal):
    """Per query: each branch's softmax numerator and denominator, mixed by denominators."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    Bq, Tq, Nq, Hq = q.shape
    G = Nq // k.shape[2]
    out = np.zeros(q.shape)
    for b, h, i in itertools.product(range(Bq), range(Nq), range(Tq)):
        s_all = q[b, i, h] @ k[b, :, h // G].T / np.sqrt(Hq)
        shift = s_all.max()
        num, den = np.zeros(Hq), 0.0
        for w, r in zip(segment_lengths, rates, strict=True):
            w = min(w, Tq)
            start, o = (i // w) * w, h % r
            if (i - start - o) % r or i - start < o:
                continue
            for j in range(start + o, min(start + w, Tq), r):
                if causal and j > i:
                    continue
                e = np.exp(s_all[j] - shift)
                num, den = num + e * v[b, j, h // G], den + e
        out[b, i, h] = num / den if den else 0.0
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_dilated_matches_numpy_reference(causal):
    q, k, v = _qkv(1)
    cfg = dict(segment_lengths=(4, 8, 16), dilation_rates=(1, 2, 4))
    out = jax.jit(lambda *a: P.dilated_attention(*a, causal=causal, **cfg))(q, k, v)
    ref = numpy_dilated(q, k, v, cfg["segment_lengths"], cfg["dilation_rates"], causal)
    chex.assert_trees_all_close(out, ref.astype(np.float32), atol=TOL)


def test_dilated_single_full_branch_is_full_attention():
    q, k, v = _qkv(2)
    out = jax.jit(lambda *a: P.dilated_attention(*a, segment_lengths=(T,), dilation_rates=(1,)))(q, k, v)
    chex.assert_trees_all_close(out, dense.attention(q, k, v), atol=TOL)


def test_dilated_rejects_mismatched_branches():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="one dilation rate"):
        P.dilated_attention(q, k, v, segment_lengths=(4, 8), dilation_rates=(1,))


# ---------------------------------------------------------------- landmark


def test_insert_and_remove_landmarks():
    tokens = np.arange(1, 12)[None]  # 11 tokens, block 4 -> 2 landmarks
    with_lm = np.asarray(P.insert_landmarks(tokens, -1, block_size=4))
    np.testing.assert_array_equal(with_lm[0], [1, 2, 3, 4, -1, 5, 6, 7, 8, -1, 9, 10, 11])
    np.testing.assert_array_equal(P.is_landmark(13, 4), with_lm[0] == -1)
    np.testing.assert_array_equal(np.asarray(P.remove_landmarks(with_lm, 4)), tokens)
    x = np.arange(2 * 8 * 3).reshape(2, 8, 3)
    emb = P.insert_landmarks(x, np.full(3, 99), block_size=4)
    assert emb.shape == (2, 10, 3) and (np.asarray(emb)[:, [4, 9]] == 99).all()


def numpy_landmark(q, k, v, block_size):
    """Grouped softmax with explicit per-query loops over groups."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    Bq, L, Nq, Hq = q.shape
    G = Nq // k.shape[2]
    bs1 = block_size + 1
    out = np.zeros(q.shape)
    for b, h, i in itertools.product(range(Bq), range(Nq), range(L)):
        s = q[b, i, h] @ k[b, :, h // G].T / np.sqrt(Hq)
        c = i // bs1
        last = [j for j in range(L) if j <= i and j // bs1 == c]
        marks = [bb * bs1 + block_size for bb in range(c)]
        direct = last + marks
        e = np.exp(s[direct] - s[direct].max())
        p = dict(zip(direct, e / e.sum(), strict=True))
        acc = sum(p[j] * v[b, j, h // G] for j in last)
        for bb in range(c):
            regular = list(range(bb * bs1, bb * bs1 + block_size))
            w = np.exp(s[regular] - s[regular].max())
            acc = acc + p[marks[bb]] * ((w / w.sum()) @ v[b, regular, h // G])
        out[b, i, h] = acc
    return out


def test_landmark_grouped_softmax_matches_numpy_reference():
    q, k, v = _qkv(3)  # L = 29 with block 4: 5 full blocks + 4 tokens
    out = jax.jit(lambda *a: P.landmark_attention(*a, block_size=4))(q, k, v)
    chex.assert_trees_all_close(out, numpy_landmark(q, k, v, 4).astype(np.float32), atol=TOL)


def test_landmark_topk_mask_matches_loops():
    q, k, _ = _qkv(4)
    bs, top = 4, 2
    got = np.asarray(P.landmark_topk_mask(q, k, block_size=bs, top_k=top))
    qn, kn = np.asarray(q, np.float64), np.asarray(k, np.float64)
    want = np.zeros((B, N, T, T), bool)
    for b, h, i in itertools.product(range(B), range(N), range(T)):
        c = i // (bs + 1)
        scores = [qn[b, i, h] @ kn[b, bb * (bs + 1) + bs, h // 2] for bb in range(c)]
        keep = sorted(np.argsort(-np.asarray(scores), kind="stable")[:top]) if c else []
        for j in range(i + 1):
            regular = j % (bs + 1) != bs
            want[b, h, i, j] = j // (bs + 1) == c or (regular and j // (bs + 1) in keep)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- reference vs blockwise


def _out_and_grads(fn, q, k, v):
    cot = jnp.asarray(np.random.default_rng(5).normal(size=q.shape), jnp.float32)

    def loss(q, k, v):
        out = fn(q, k, v)
        return jnp.sum(out * cot), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def _pairs():
    """name -> (reference fn, blockwise fn) on [B, 29, 4 | 2, 8] (odd length, GQA, batch 2)."""
    bw = dict(block_q=8, block_k=8)
    longformer = P.Longformer(window=4, global_positions=(0, 13))
    bigbird = P.BigBird(seq_len=T, block=4, num_random_blocks=2, num_heads=N, seed=3)
    dil = dict(segment_lengths=(4, 8, 32), dilation_rates=(1, 2, 4))
    dil_one = dict(segment_lengths=(16,), dilation_rates=(2,))
    return {
        "sliding_causal": (
            lambda q, k, v: dense.attention(q, k, v, **P.sliding_window(6)),
            lambda q, k, v: blockwise_attention(q, k, v, **P.sliding_window(6), **bw),
        ),
        "sliding_bidirectional": (
            lambda q, k, v: dense.attention(q, k, v, **P.sliding_window(5, causal=False)),
            lambda q, k, v: blockwise_attention(q, k, v, **P.sliding_window(5, causal=False), **bw),
        ),
        "streaming_llm": (
            lambda q, k, v: dense.attention(q, k, v, **P.streaming_llm(5, sinks=3)),
            lambda q, k, v: blockwise_attention(q, k, v, **P.streaming_llm(5, sinks=3), **bw),
        ),
        "longformer": (
            lambda q, k, v: dense.attention(q, k, v, causal=False, mask=P.materialise(longformer, B, T, T)),
            lambda q, k, v: blockwise_attention(q, k, v, causal=False, mask=longformer, **bw),
        ),
        "bigbird": (
            lambda q, k, v: dense.attention(q, k, v, causal=False, mask=P.materialise(bigbird, B, T, T)),
            lambda q, k, v: blockwise_attention(q, k, v, causal=False, mask=bigbird, block_q=4, block_k=4),
        ),
        "dilated": (
            lambda q, k, v: P.dilated_attention(q, k, v, **dil),
            lambda q, k, v: P.dilated_attention(q, k, v, impl="blockwise", **dil, **bw),
        ),
        "dilated_one_branch": (
            lambda q, k, v: P.dilated_attention(q, k, v, **dil_one),
            lambda q, k, v: P.dilated_attention(q, k, v, impl="blockwise", **dil_one, **bw),
        ),
        "landmark_train": (
            lambda q, k, v: P.landmark_attention(q, k, v, block_size=4),
            lambda q, k, v: P.landmark_attention(q, k, v, block_size=4, impl="blockwise"),
        ),
        "landmark_retrieval": (
            lambda q, k, v: P.landmark_retrieval_attention(q, k, v, block_size=4, top_k=2),
            lambda q, k, v: P.landmark_retrieval_attention(q, k, v, block_size=4, top_k=2, impl="blockwise",
                                                           **bw),
        ),
    }


PAIR_NAMES = sorted(_pairs())
DEFAULT_PAIRS = {"bigbird", "dilated_one_branch", "landmark_train"}


@pytest.mark.parametrize(
    "name", [n if n in DEFAULT_PAIRS else pytest.param(n, marks=pytest.mark.slow) for n in PAIR_NAMES]
)
def test_reference_and_blockwise_agree(name):
    ref_fn, bw_fn = _pairs()[name]
    q, k, v = _qkv(6)
    out, grads = _out_and_grads(bw_fn, q, k, v)
    ref_out, ref_grads = _out_and_grads(ref_fn, q, k, v)
    chex.assert_shape(out, (B, T, N, H))
    chex.assert_trees_all_close(out, ref_out, atol=TOL)
    chex.assert_trees_all_close(grads, ref_grads, atol=TOL)
    chex.assert_tree_all_finite(grads)
