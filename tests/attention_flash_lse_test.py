"""Flash's log-sum-exp variant and its backward from a saved (out, lse), against the dense oracle."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import dense
from longctx_jax.attention.flash import flash_attention_backward, flash_attention_with_lse
from longctx_jax.attention.spec import AttentionSpec
from longctx_jax.positional.alibi import alibi_slopes

TOL = {"atol": 1e-5, "rtol": 1e-5}
B, T, N, K, H = 2, 37, 4, 2, 16
BLOCKS = {"block_q": 16, "block_k": 16}


def _inputs(seed=0):
    kq, kk, kv, ko, kl = jax.random.split(jax.random.key(seed), 5)
    return (
        jax.random.normal(kq, (B, T, N, H)),
        jax.random.normal(kk, (B, T, K, H)),
        jax.random.normal(kv, (B, T, K, H)),
        jax.random.normal(ko, (B, T, N, H)),
        jax.random.normal(kl, (B, T, N)),
    )


SPECS = {
    "causal_window_segments": dict(window=9, segment_ids=np.repeat([[0, 1]], [20, 17], axis=1).repeat(B, 0)),
    "bidirectional_alibi_softcap": dict(causal=False, alibi_slopes=alibi_slopes(N), logit_soft_cap=5.0),
}


@pytest.mark.parametrize("case", SPECS)
def test_lse_and_its_gradient_match_dense(case):
    q, k, v, d_out, d_lse = _inputs()
    spec = AttentionSpec(**SPECS[case])

    def loss(fn):
        def f(q, k, v):
            out, lse = fn(q, k, v, spec)
            return jnp.sum(out * d_out) + jnp.sum(lse * d_lse), (out, lse)

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (_, got), got_grads = loss(lambda *a: flash_attention_with_lse(*a, **BLOCKS))
    (_, want), want_grads = loss(dense.attention_with_lse)
    chex.assert_trees_all_close((got, got_grads), (want, want_grads), **TOL)


@pytest.mark.parametrize("case", SPECS)
def test_backward_from_a_larger_softmax_sums_to_the_full_gradient(case):
    """Ring-flash backward: each key half's kernel gets the GLOBAL out and lse."""
    q, k, v, d_out, _ = _inputs(1)
    fields = SPECS[case]
    out, lse = dense.attention_with_lse(q, k, v, **fields)
    def loss(q, k, v):
        return jnp.sum(dense.attention(q, k, v, **fields) * d_out)

    want = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    cut = 19
    dq = 0.0
    dkv = []
    for keys in (slice(0, cut), slice(cut, T)):
        part = dict(fields, q_positions=np.arange(T), k_positions=np.arange(T)[keys])
        if "segment_ids" in fields:
            part["kv_segment_ids"] = fields["segment_ids"][:, keys]
        g = flash_attention_backward(q, k[:, keys], v[:, keys], out, lse, d_out, None, AttentionSpec(**part),
                                     **BLOCKS)
        dq = dq + g[0]
        dkv.append(g[1:])
    got = (dq, jnp.concatenate([dkv[0][0], dkv[1][0]], 1), jnp.concatenate([dkv[0][1], dkv[1][1]], 1))
    chex.assert_trees_all_close(got, want, **TOL)


def test_backward_refuses_a_bias():
    q, k, v, d_out, d_lse = _inputs()
    with pytest.raises(ValueError, match="bias"):
        spec = AttentionSpec(bias=np.zeros((1, 1, T, T)))
        flash_attention_backward(q, k, v, d_out, d_lse, d_out, None, spec)
