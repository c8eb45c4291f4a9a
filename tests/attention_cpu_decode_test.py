"""cpu_decode (the decode-step kernel) equals the dense oracle: outputs, lse and gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import dense, dispatch
from longctx_jax.attention.cpu_decode import cpu_decode_attention, cpu_decode_attention_with_lse
from longctx_jax.attention.kernels import cpu_flash_plan
from longctx_jax.attention.spec import AttentionSpec

TOL = 2e-5


def _inputs(B, T, N, K, H, S, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (B, T, N, H)), jax.random.normal(ks[1], (B, S, K, H)),
            jax.random.normal(ks[2], (B, S, K, H)))


CASES = {
    # SmolLM2's heads, one token at position 1000 over a 1100-slot cache (slots past it masked).
    "gqa_one_token": ((1, 1, 9, 3, 64, 1100), [[1000]], None, {}),
    # Two sequences, three rows each, a sliding window; chunks of 256 keys split the window.
    "window_rows": ((2, 3, 4, 2, 32, 1100), [[5, 6, 7], [1097, 1098, 1099]], None,
                    {"causal": True, "window": 300}),
    # StreamingLLM: re-indexed, non-monotonic key positions, four sinks, head_dim 48 (padded).
    "sinks_permuted": ((1, 1, 4, 4, 48, 1100), [[2000]], lambda S: (np.arange(S) * 7) % 2100,
                       {"causal": True, "window": 100, "sinks": 4}),
    # A row that may attend to nothing (position -5): output 0 and lse 0, as dense gives.
    "empty_row": ((1, 2, 2, 1, 64, 40), [[-5, 3]], None, {"causal": True}),
    # Non-causal over default positions (the last-row call of a prefill).
    "noncausal_default": ((1, 1, 6, 2, 64, 777), None, None, {"causal": False}),
}


def _case(case, seed=0):
    """(q, k, v) and the AttentionSpec of one CASES entry."""
    shape, q_pos, k_pos, fields = case
    B, S = shape[0], shape[-1]
    positions = {}
    if q_pos is not None:
        positions["q_positions"] = jnp.asarray(q_pos)
        positions["k_positions"] = jnp.broadcast_to(
            jnp.asarray(k_pos(S) if k_pos else np.arange(S)), (B, S))
    return _inputs(*shape, seed=seed), AttentionSpec(**fields, **positions)


@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_dense_forward_lse_and_gradients(name):
    (q, k, v), spec = _case(CASES[name])
    H = q.shape[-1]
    out, lse = jax.jit(lambda q, k, v: cpu_decode_attention_with_lse(q, k, v, spec))(q, k, v)
    want, want_lse = dense.attention_with_lse(q, k, v, spec)
    chex.assert_trees_all_close(out, want, atol=TOL, rtol=TOL)
    chex.assert_trees_all_close(lse, want_lse, atol=TOL, rtol=TOL)
    if name == "empty_row":
        assert float(jnp.abs(out[0, 0]).max()) == 0.0 and float(jnp.abs(lse[0, 0]).max()) == 0.0

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, spec) * jnp.cos(jnp.arange(H)))
    got = jax.grad(loss(cpu_decode_attention), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(dense.attention), argnums=(0, 1, 2))(q, k, v)
    chex.assert_trees_all_close(got, ref, atol=1e-4, rtol=1e-4)


def test_auto_sends_a_decode_step_to_it():
    q, k, v = _inputs(1, 1, 9, 3, 64, 600, seed=3)
    spec = AttentionSpec(q_positions=jnp.array([[550]]), k_positions=jnp.arange(600)[None])
    lowered = jax.jit(lambda q, k, v: dispatch.attend(q, k, v, spec, impl="auto")).lower(q, k, v).as_text()
    assert "LongctxCpuDecodeAttention" in lowered
    chex.assert_trees_all_close(dispatch.attend(q, k, v, spec, impl="auto"), dense.attention(q, k, v, spec),
                                atol=TOL, rtol=TOL)


def test_bad_input_is_refused_before_work():
    q, k, v = _inputs(1, 1, 4, 3, 64, 32)
    with pytest.raises(ValueError, match="multiple"):
        cpu_decode_attention(q, k, v, AttentionSpec())
    q, k, v = _inputs(1, 1, 4, 2, 64, 32)
    with pytest.raises(ValueError, match="bias"):
        cpu_decode_attention(q, k, v, AttentionSpec(bias=jnp.zeros((1, 1, 1, 32))))


def _builds() -> list:
    """Every build this CPU runs (and AVX-512's 16-lane logic on AVX2 hardware where it has no AVX-512)."""
    runnable = cpu_flash_plan.supported_isas()
    params = [pytest.param(cpu_flash_plan.plan(isa), id=isa) for isa in runnable]
    if "avx512" not in runnable and "avx2" in runnable:
        params.append(pytest.param(cpu_flash_plan.plan("avx2", lanes=16), id="avx512_tile_on_avx2"))
    return params


@pytest.mark.parametrize("build", _builds())
@pytest.mark.parametrize("name", ["gqa_one_token", "window_rows", "sinks_permuted", "wide_head"])
def test_every_isa_build_equals_dense(name, build):
    # The key tiles' transposed sums and the register-held outputs are per-ISA code (4, 8 or 16
    # lanes); "wide_head" (288 channels, 72 / 36 / 18 vectors) takes several passes of up to 4
    # register-held output vectors, the last one shorter.
    cases = {**CASES, "wide_head": ((1, 2, 4, 2, 288, 600), None, None, {"causal": False})}
    (q, k, v), spec = _case(cases[name], seed=1)
    out, lse = jax.jit(lambda q, k, v: cpu_decode_attention_with_lse(q, k, v, spec, isa=build))(q, k, v)
    want, want_lse = dense.attention_with_lse(q, k, v, spec)
    chex.assert_trees_all_close(out, want, atol=TOL, rtol=TOL)
    chex.assert_trees_all_close(lse, want_lse, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("build", _builds())
def test_slots_no_row_attends_to_stay_out(build):
    # Each chunk works on the span from its first to its last key that some row may attend to
    # (a cache's empty slots past the written length, keys before every row's window: left
    # out). NaN there must not reach the output: it equals dense over the same cache with zeros
    # in those slots (dense itself would spread the NaN through the softmax weights' 0 * NaN).
    # Rows at 1097-1099 with a 300-key window attend to keys 798..1099 of 1300 slots: three
    # 256-key chunks lie wholly before the span, one starts inside it (at 798, not a multiple
    # of 16), one ends inside it and one lies wholly past it.
    q, k, v = _inputs(1, 3, 4, 2, 64, 1300, seed=2)
    spec = AttentionSpec(causal=True, window=300, q_positions=jnp.array([[1097, 1098, 1099]]),
                         k_positions=jnp.arange(1300)[None])
    outside = (jnp.arange(1300) < 798) | (jnp.arange(1300) >= 1100)
    poisoned = [jnp.where(outside[None, :, None, None], jnp.nan, x) for x in (k, v)]
    zeroed = [jnp.where(outside[None, :, None, None], 0.0, x) for x in (k, v)]
    out, lse = jax.jit(lambda q, k, v: cpu_decode_attention_with_lse(q, k, v, spec, isa=build))(q, *poisoned)
    want, want_lse = dense.attention_with_lse(q, *zeroed, spec)
    chex.assert_tree_all_finite((out, lse))
    chex.assert_trees_all_close(out, want, atol=TOL, rtol=TOL)
    chex.assert_trees_all_close(lse, want_lse, atol=TOL, rtol=TOL)


# Every register-tile shape of the decode kernel: H / lanes vectors per row (1, 2, 4, 8, 16, and
# too many for a tile) and groups of T x G query rows split into tiles of up to 4 rows (the last
# shorter), over a cache with empty slots, a window and sinks.
TILE_CASES = [  # (T, N, K, H)
    (1, 3, 1, 16), (2, 8, 2, 32), (5, 3, 3, 64), (3, 8, 2, 64), (1, 4, 1, 128), (2, 2, 1, 256),
]


@pytest.mark.parametrize("build", _builds())
@pytest.mark.parametrize("T, N, K, H", TILE_CASES)
def test_register_tiles_of_every_shape_equal_dense(build, T, N, K, H):
    S, written = 700, 610
    q, k, v = _inputs(2, T, N, K, H, S, seed=T * 1000 + N * 10 + H)
    k_pos = np.where(np.arange(S) < written, np.arange(S), 2**30)
    q_pos = np.stack([np.arange(written - T, written), np.arange(300, 300 + T)])
    spec = AttentionSpec(causal=True, window=400, sinks=3, q_positions=jnp.asarray(q_pos),
                         k_positions=jnp.broadcast_to(jnp.asarray(k_pos), (2, S)))
    out, lse = jax.jit(lambda q, k, v: cpu_decode_attention_with_lse(q, k, v, spec, isa=build))(q, k, v)
    want, want_lse = dense.attention_with_lse(q, k, v, spec)
    chex.assert_trees_all_close(out, want, atol=TOL, rtol=TOL)
    chex.assert_trees_all_close(lse, want_lse, atol=TOL, rtol=TOL)
