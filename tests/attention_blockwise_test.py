"""`blockwise_attention` against the dense oracle: outputs and gradients at 1e-5 (float32)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import dense
from longctx_jax.attention.blockwise import blockwise_attention, blockwise_attention_with_lse
from longctx_jax.positional.alibi import alibi_slopes

B, T, N, K, H = 2, 37, 4, 2, 8
TOL = 1e-5


def _inputs(seed=0, T=T, S=T, N=N, K=K, dtype=np.float32):
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(B, T, N, H)), dtype)
    k = jnp.asarray(r.normal(size=(B, S, K, H)), dtype)
    v = jnp.asarray(r.normal(size=(B, S, K, H)), dtype)
    return q, k, v


def _segments(T, seed):
    r = np.random.default_rng(seed)
    return np.cumsum(r.random((B, T)) < 0.1, axis=1).astype(np.int32)


_r = np.random.default_rng(1)
CASES = {
    "causal": dict(),
    "full": dict(causal=False),
    "window": dict(window=7),
    "window_bidir": dict(causal=False, window=6),
    "sinks": dict(window=5, sinks=3),
    "bias": dict(bias=_r.normal(size=(B, 1, T, T)).astype(np.float32)),
    "bias_head_row": dict(causal=False, bias=_r.normal(size=(1, N, 1, T)).astype(np.float32)),
    "alibi_softcap": dict(alibi_slopes=alibi_slopes(N), logit_soft_cap=2.5, scale=0.3),
    "segments": dict(segment_ids=_segments(T, 2)),
    "positions": dict(q_positions=np.arange(T)[::-1] * 2, k_positions=np.arange(T)[::-1] * 2, window=9),
    "mask": dict(causal=False, mask=_r.random((B, N, T, T)) < 0.3),
}


def _grads(fn, kw, q, k, v):
    """Output and grads w.r.t. q, k, v (and bias) of sum(out * cotangent), one compile."""
    kw = dict(kw)
    bias = kw.pop("bias", None)
    cot = jnp.asarray(np.random.default_rng(99).normal(size=q.shape), jnp.float32)

    def loss(q, k, v, bias):
        out = fn(q, k, v, bias=bias, **kw)
        return jnp.sum(out.astype(jnp.float32) * cot), out

    argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))(q, k, v, bias)
    return out, grads


def _blockwise(block_q=8, block_k=16):
    return lambda *a, **kw: blockwise_attention(*a, block_q=block_q, block_k=block_k, **kw)


def test_kitchen_sink_matches_oracle():
    """Odd lengths, GQA, batch 2, window + sinks, bias + ALiBi, soft-cap, segments, positions."""
    T, S = 29, 29
    q, k, v = _inputs(11, T=T, S=S, N=6, K=2)
    r = np.random.default_rng(12)
    kw = dict(
        window=9, sinks=2, bias=r.normal(size=(B, 1, T, S)).astype(np.float32),
        alibi_slopes=alibi_slopes(6), logit_soft_cap=4.0, segment_ids=_segments(T, 13),
        q_positions=np.arange(T) + 3, k_positions=np.arange(S) + 3,
    )
    out, grads = _grads(_blockwise(8, 8), kw, q, k, v)
    ref_out, ref_grads = _grads(dense.attention, kw, q, k, v)
    chex.assert_trees_all_close(out, ref_out, atol=TOL)
    chex.assert_trees_all_close(grads, ref_grads, atol=TOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_oracle_forward_and_grads(name):
    q, k, v = _inputs()
    out, grads = _grads(_blockwise(), CASES[name], q, k, v)
    ref_out, ref_grads = _grads(dense.attention, CASES[name], q, k, v)
    chex.assert_trees_all_close(out, ref_out, atol=TOL)
    chex.assert_trees_all_close(grads, ref_grads, atol=TOL)


@pytest.mark.slow
@pytest.mark.parametrize(
    "T,S,block_q,block_k", [(1, 1, 4, 4), (19, 5, 8, 8), (5, 23, 16, 8), (33, 33, 64, 64)]
)
def test_odd_and_cross_lengths(T, S, block_q, block_k):
    q, k, v = _inputs(3, T=T, S=S, N=6, K=3)
    pos_q = np.arange(T) + S  # queries after all keys (a KV-cache step)
    kw = dict(q_positions=pos_q, k_positions=np.arange(S), window=4, sinks=1)
    out, grads = _grads(_blockwise(block_q, block_k), kw, q, k, v)
    ref_out, ref_grads = _grads(dense.attention, kw, q, k, v)
    chex.assert_shape(out, (B, T, 6, H))
    chex.assert_trees_all_close(out, ref_out, atol=TOL)
    chex.assert_trees_all_close(grads, ref_grads, atol=TOL)


@pytest.mark.slow
def test_lse_and_its_gradient():
    q, k, v = _inputs(4)
    out, lse = blockwise_attention_with_lse(q, k, v, window=9, block_q=8, block_k=8)
    logits = dense.attention_logits(q, k, scale=H**-0.5)  # [B, K, G, T, S]
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    logits = jnp.where((j <= i) & (i - j < 9), logits, -jnp.inf)
    ref_lse = jax.nn.logsumexp(logits, axis=-1).transpose(0, 3, 1, 2).reshape(B, T, N)
    chex.assert_trees_all_close(lse, ref_lse, atol=TOL)
    chex.assert_trees_all_close(out, dense.attention(q, k, v, window=9), atol=TOL)

    def ref(q, k, v):
        s = dense.attention_logits(q, k, scale=H**-0.5)
        s = jnp.where((j <= i) & (i - j < 9), s, -jnp.inf)
        return jnp.sum(jnp.cos(jax.nn.logsumexp(s, axis=-1)))

    def ours(q, k, v):
        _, lse = blockwise_attention_with_lse(q, k, v, window=9, block_q=8, block_k=8)
        return jnp.sum(jnp.cos(lse.reshape(B, T, K, N // K).transpose(0, 2, 3, 1)))

    g = jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(q, k, v)
    chex.assert_trees_all_close(g, jax.grad(ref, argnums=(0, 1, 2))(q, k, v), atol=TOL)


def test_fully_masked_rows_zero_output_and_grads():
    q, k, v = _inputs(5)
    seg = np.zeros((B, T), np.int32)
    kv_seg = np.ones((B, T), np.int32)

    kw = dict(segment_ids=seg, kv_segment_ids=kv_seg)
    out, grads = _grads(_blockwise(8, 8), kw, q, k, v)
    np.testing.assert_array_equal(np.asarray(out), 0.0)
    for g in grads:
        np.testing.assert_array_equal(np.asarray(g), 0.0)


@pytest.mark.slow
def test_bfloat16_close_to_float32():
    q, k, v = _inputs(6, dtype=jnp.bfloat16)
    out = blockwise_attention(q, k, v, block_q=16, block_k=16)
    assert out.dtype == jnp.bfloat16
    ref = dense.attention(*(x.astype(jnp.float32) for x in (q, k, v)))
    chex.assert_trees_all_close(out.astype(jnp.float32), ref, atol=3e-2)


def test_memory_is_linear_in_sequence_length():
    """Compiled temp memory of forward + backward grows ~linearly; dense grows quadratically."""

    def temp_bytes(fn, T):
        q = jax.ShapeDtypeStruct((1, T, 2, 16), jnp.float32)
        grad = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2))
        return jax.jit(grad).lower(q, q, q).compile().memory_analysis().temp_size_in_bytes

    blockwise = lambda q, k, v: blockwise_attention(q, k, v, block_q=128, block_k=128)  # noqa: E731
    small, large = temp_bytes(blockwise, 1024), temp_bytes(blockwise, 4096)
    assert large < 6 * small, (small, large)
    assert large < 4096 * 4096 * 2 * 4 / 4  # far below one float32 [N, T, S] logits array
    dense_temp = jax.jit(dense.attention).lower(*[jax.ShapeDtypeStruct((1, 4096, 2, 16), jnp.float32)] * 3)
    assert dense_temp.compile().memory_analysis().temp_size_in_bytes > 4096 * 4096 * 2 * 4


@pytest.mark.slow
def test_band_iteration_matches_explicit_positions():
    """Default positions take the banded loop; explicit equal positions take the full loop."""
    q, k, v = _inputs(7, T=70, S=70)
    pos = np.arange(70)
    for kw in (dict(window=10), dict(causal=False, window=10), dict(window=10, sinks=2)):
        banded = blockwise_attention(q, k, v, block_q=16, block_k=8, **kw)
        full = blockwise_attention(q, k, v, q_positions=pos, k_positions=pos, block_q=16, block_k=8, **kw)
        chex.assert_trees_all_close(banded, full, atol=TOL)
        chex.assert_trees_all_close(banded, dense.attention(q, k, v, **kw), atol=TOL)


def test_bad_blocks_raise():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="block_q"):
        blockwise_attention(q, k, v, block_q=0)
