"""`AttentionSpec`: one validated description of an attention call, taken by every implementation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import dense, dispatch
from longctx_jax.attention.patterns import Longformer
from longctx_jax.attention.spec import AttentionSpec, make_spec

B, T, N, K, H = 1, 8, 4, 2, 8
CPU_IMPLS = ["dense", "blockwise", "xla"]


def _qkv(seed=0, v_dim=H, t=T):
    r = np.random.default_rng(seed)
    return (r.normal(size=(B, t, N, H)).astype(np.float32), r.normal(size=(B, t, K, H)).astype(np.float32),
            r.normal(size=(B, t, K, v_dim)).astype(np.float32))


@pytest.mark.parametrize("field,value", [
    ("window", 0), ("window", -3), ("window", 2.5), ("window", True), ("sinks", -1), ("sinks", 1.5),
    ("logit_soft_cap", 0.0), ("logit_soft_cap", -1.0), ("scale", float("nan")), ("scale", 0.0),
    ("causal", "yes"),
])
def test_bad_static_fields_are_refused_when_the_spec_is_built(field, value):
    with pytest.raises(ValueError, match=field):
        AttentionSpec(**{field: value})


@pytest.mark.parametrize("impl", CPU_IMPLS + ["cpu_flash", "flash"])
def test_every_implementation_refuses_bad_shapes_before_work(impl):
    q, k, v = _qkv(v_dim=H + 2)
    with pytest.raises(ValueError, match="v head_dim"):
        dispatch.attend(q, k, v, impl=impl)
    q, k, v = _qkv(t=0)
    with pytest.raises(ValueError, match="non-empty"):
        dispatch.attend(q, k, v, impl=impl)
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="window"):
        dispatch.attend(q, k, v, impl=impl, window=0)
    with pytest.raises(ValueError, match="q_positions"):
        dispatch.attend(q, k, v, impl=impl, q_positions=np.zeros((B, T + 1), np.int32))
    with pytest.raises(TypeError, match="unknown attention arguments"):
        dispatch.attend(q, k, v, impl=impl, windw=3)


def test_float_positions_and_misshapen_slopes_are_refused():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="integers"):
        dense.attention(q, k, v, q_positions=np.arange(T, dtype=np.float32))
    with pytest.raises(ValueError, match="alibi_slopes"):
        dense.attention(q, k, v, alibi_slopes=np.ones(N + 1))
    with pytest.raises(ValueError, match="kv_segment_ids"):
        dense.attention(q, k, v, kv_segment_ids=np.zeros((B, T), np.int32))


def test_spec_and_keyword_forms_agree_and_merge():
    q, k, v = _qkv(1)
    spec = AttentionSpec(window=3, scale=0.3)
    chex.assert_trees_all_close(dense.attention(q, k, v, spec), dense.attention(q, k, v, window=3, scale=0.3))
    merged = make_spec(spec, window=5)
    assert (merged.window, merged.scale) == (5, 0.3)
    chex.assert_trees_all_close(dense.attention(q, k, v, spec, window=5),
                                dense.attention(q, k, v, window=5, scale=0.3))


def test_spec_is_a_pytree_with_static_options_and_mask_callables():
    pattern = Longformer(window=3, global_positions=(0,))
    spec = AttentionSpec(window=None, causal=True, mask=pattern, q_positions=np.arange(T)[None])
    leaves, treedef = jax.tree.flatten(spec)
    assert len(leaves) == 1  # q_positions only; the callable mask and options are static
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.mask is pattern and rebuilt.causal and rebuilt.q_positions is leaves[0]
    q, k, v = _qkv(2)
    out = jax.jit(lambda s, q, k, v: dense.attention(q, k, v, s))(spec, q, k, v)
    blockwise = dispatch.attend(q, k, v, spec, impl="blockwise", block_q=4, block_k=4)
    chex.assert_trees_all_close(out, blockwise, atol=1e-5)


def test_dense_evaluates_a_mask_callable_like_its_materialised_mask():
    pattern = Longformer(window=3, global_positions=(0, 5))
    q, k, v = _qkv(3)
    pos = jnp.arange(T)[None]
    materialised = pattern(pos, pos)
    chex.assert_trees_all_close(dense.attention(q, k, v, mask=pattern),
                                dense.attention(q, k, v, mask=materialised))
