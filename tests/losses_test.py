"""Next-token NLL against a float64 NumPy log-softmax written here."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.losses import masked_mean, token_nll


def reference_nll(logits, targets):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]


@pytest.mark.parametrize("shape", [(2, 5, 11), (3, 7), (1, 1, 1, 4)])
@pytest.mark.parametrize("jit", [False, True])
def test_token_nll_matches_log_softmax(shape, jit):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=shape).astype(np.float32) * 3
    targets = rng.integers(0, shape[-1], size=shape[:-1])
    fn = jax.jit(token_nll) if jit else token_nll
    got = fn(jnp.asarray(logits), jnp.asarray(targets))
    chex.assert_shape(got, shape[:-1])
    assert got.dtype == jnp.float32
    chex.assert_trees_all_close(got, reference_nll(logits, targets).astype(np.float32), atol=1e-5, rtol=1e-5)


def test_token_nll_of_bfloat16_logits_is_float32_and_large_logits_are_finite():
    logits = jnp.asarray([[8192.0, 0.0, -8192.0]], jnp.bfloat16)
    got = token_nll(logits, jnp.asarray([1]))
    assert got.dtype == jnp.float32
    chex.assert_trees_all_close(got, jnp.asarray([8192.0]), rtol=1e-5)


def test_token_nll_refuses_mismatched_targets():
    want = r"targets shape \(2, 4\) must equal the logits' leading shape \(2, 3\)"
    with pytest.raises(ValueError, match=want):
        token_nll(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), jnp.int32))


def test_masked_mean():
    values = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.asarray([[1, 0, 1], [0, 0, 1]])
    chex.assert_trees_all_close(masked_mean(values, mask), (1.0 + 3.0 + 6.0) / 3, atol=1e-6)
    assert float(masked_mean(values, jnp.zeros_like(mask))) == 0.0
