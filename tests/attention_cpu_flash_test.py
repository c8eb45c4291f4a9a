"""The fused C++ CPU kernel (`cpu_flash_attention`) against the dense oracle and jax.nn.

Forward and gradients at 1e-5 (float32) for causal / full / windowed masks, GQA, lengths
that are not multiples of the blocks, T != S, odd head dims and empty rows; clear errors for
what it does not take. Skipped when the machine has no C++ compiler.

Every test that runs the kernel runs once per build this CPU can execute (`build` fixture):
each ISA of `cpu_flash_plan.supported_isas()` (here: portable and AVX2, or AVX-512 too) and,
on a CPU without AVX-512, AVX-512's 16-lane, 24-row tile logic compiled with AVX2 flags (each
vector split in two; the AVX-512 instructions themselves only run on an AVX-512 machine). The
gradient tests (blockwise's backward from the kernel's out and lse) run the other builds
under the `slow` marker.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import dense, dispatch
from longctx_jax.attention.blockwise import blockwise_attention
from longctx_jax.attention.kernels import cpu_flash_plan, native
from longctx_jax.attention.masks import AttentionMask

try:
    from longctx_jax.attention.cpu_flash import (
        DEFAULT_BUILD,
        cpu_flash_attention,
        cpu_flash_attention_with_lse,
    )
except native.NativeKernelUnavailable as error:
    if native.compiler() is not None:  # a compiler that cannot build the kernel is a failure
        raise
    pytest.skip(f"no C++ compiler on this machine: {error}", allow_module_level=True)

TOL = 1e-5


def _inputs(seed=0, B=2, T=45, S=None, N=6, K=2, H=32, dtype=np.float32):
    r = np.random.default_rng(seed)
    S = T if S is None else S
    q = jnp.asarray(r.normal(size=(B, T, N, H)), dtype)
    k = jnp.asarray(r.normal(size=(B, S, K, H)), dtype)
    v = jnp.asarray(r.normal(size=(B, S, K, H)), dtype)
    return q, k, v


def _reference_with_lse(q, k, v, *, causal=True, window=None, scale=None):
    """Dense output and lse `[B, T, N]` (0 on rows with no allowed key), written out here."""
    B, T, N, H = q.shape
    S = k.shape[1]
    scale = H**-0.5 if scale is None else scale
    logits = dense.attention_logits(q, k, scale=scale)  # [B, K, G, T, S]
    allowed = AttentionMask(causal, window).allowed(jnp.arange(T)[:, None], jnp.arange(S)[None, :])
    logits = jnp.where(allowed, logits, -jnp.inf)
    any_allowed = allowed.any(-1)
    lse = jnp.where(any_allowed, jax.nn.logsumexp(logits, axis=-1), 0.0)
    lse_BTN = lse.transpose(0, 3, 1, 2).reshape(B, T, N)
    return dense.attention(q, k, v, causal=causal, window=window, scale=scale), lse_BTN


def _builds(slow_unless_default: bool) -> list:
    """One param per build this CPU runs (see the module docstring)."""
    runnable = cpu_flash_plan.supported_isas()
    params = []
    for isa in runnable:
        slow = slow_unless_default and isa != DEFAULT_BUILD.isa
        marks = [pytest.mark.slow] if slow else []
        params.append(pytest.param(cpu_flash_plan.plan(isa), id=isa, marks=marks))
    if "avx512" not in runnable and "avx2" in runnable:
        params.append(pytest.param(cpu_flash_plan.plan("avx2", lanes=16), id="avx512_tile_on_avx2",
                                   marks=[pytest.mark.slow] if slow_unless_default else []))
    return params


BUILDS = _builds(slow_unless_default=False)
GRADIENT_BUILDS = _builds(slow_unless_default=True)


def _small(build):
    """Small blocks so every case crosses several query blocks, key blocks and partial panels."""
    return dict(block_q=8, block_k=16, isa=build)


CASES = {
    "causal": dict(),
    "full": dict(causal=False),
    "window": dict(window=7),
    "window_bidir": dict(causal=False, window=6),
    "scale": dict(scale=0.3),
}


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_lse_match_dense(case, build):
    kwargs = CASES[case]
    q, k, v = _inputs(seed=len(case))
    fn = jax.jit(lambda q, k, v: cpu_flash_attention_with_lse(q, k, v, **kwargs, **_small(build)))
    out, lse = fn(q, k, v)
    ref_out, ref_lse = _reference_with_lse(q, k, v, **kwargs)
    chex.assert_shape(out, q.shape)
    chex.assert_trees_all_close(out, ref_out, atol=TOL, rtol=TOL)
    chex.assert_trees_all_close(lse, ref_lse, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("T,S,N,K", [(1, 1, 1, 1), (45, 70, 6, 3), (70, 45, 4, 4), (130, 130, 9, 3)])
@pytest.mark.parametrize("causal", [True, False])
def test_shapes_and_gqa_match_jax_nn(T, S, N, K, causal, build):
    q, k, v = _inputs(seed=T + S, T=T, S=S, N=N, K=K, H=64)
    out = cpu_flash_attention(q, k, v, causal=causal, **_small(build))
    if causal and T != S:  # jax.nn aligns causal masks differently when T != S; ours is k <= q
        ref = dense.attention(q, k, v, causal=True)
    else:
        ref = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    chex.assert_trees_all_close(out, ref, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("build", BUILDS)
def test_default_blocks_at_a_few_thousand_tokens(build):
    # The build's own blocks, compiled in from this machine's caches (block_q = block_k = None).
    q, k, v = _inputs(seed=3, B=1, T=1100, N=3, K=1, H=64)
    got, want = cpu_flash_attention(q, k, v, isa=build), blockwise_attention(q, k, v)
    chex.assert_trees_all_close(got, want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("build", BUILDS)
def test_empty_rows_give_zero_not_nan(build):
    # Queries past the last key by more than the window see no key at all.
    q, k, v = _inputs(seed=4, T=40, S=10, N=2, K=1)
    out, lse = cpu_flash_attention_with_lse(q, k, v, window=5, **_small(build))
    ref_out, ref_lse = _reference_with_lse(q, k, v, window=5)
    assert np.isfinite(np.asarray(out)).all()
    chex.assert_trees_all_close(out[:, 20:], jnp.zeros_like(out[:, 20:]))
    chex.assert_trees_all_close((out, lse), (ref_out, ref_lse), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("build", GRADIENT_BUILDS)
@pytest.mark.parametrize("case", ["causal", "full", "window"])
def test_gradients_match_dense(case, build):
    kwargs = CASES[case]
    q, k, v = _inputs(seed=7, T=37, N=4, K=2)
    cot = jnp.asarray(np.random.default_rng(8).normal(size=q.shape), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * cot)

    got = jax.grad(loss(lambda q, k, v: cpu_flash_attention(q, k, v, **kwargs, **_small(build))),
                   (0, 1, 2))(q, k, v)
    want = jax.grad(loss(lambda q, k, v: dense.attention(q, k, v, **kwargs)), (0, 1, 2))(q, k, v)
    chex.assert_trees_all_close(got, want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("build", GRADIENT_BUILDS)
def test_lse_gradient_matches_dense(build):
    q, k, v = _inputs(seed=9, T=29, N=2, K=1)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)[1]))

    got = jax.grad(loss(lambda q, k, v: cpu_flash_attention_with_lse(q, k, v, **_small(build))),
                   (0, 1, 2))(q, k, v)
    want = jax.grad(loss(_reference_with_lse), (0, 1, 2))(q, k, v)
    chex.assert_trees_all_close(got, want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("build", BUILDS)
def test_bfloat16_inputs_compute_in_float32(build):
    q, k, v = _inputs(seed=10, dtype=jnp.bfloat16)
    out = cpu_flash_attention(q, k, v, **_small(build))
    assert out.dtype == jnp.bfloat16
    ref = dense.attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))
    chex.assert_trees_all_close(out.astype(jnp.float32), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("build", BUILDS)
def test_dispatch_runs_it_by_name(build):
    q, k, v = _inputs(seed=11)
    chex.assert_trees_all_close(
        dispatch.attend(q, k, v, impl="cpu_flash", window=9, sinks=0, alibi_slopes=None, isa=build),
        dense.attention(q, k, v, window=9), atol=TOL, rtol=TOL,
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(sinks=4, window=8), "sinks"),
        (dict(q_positions=jnp.arange(45)), "q_positions"),
        (dict(alibi_slopes=jnp.ones(6)), "alibi_slopes"),
        (dict(window=0), "window"),
        (dict(block_k=24), "block_k"),
    ],
)
def test_unsupported_arguments_raise(kwargs, message):
    q, k, v = _inputs()
    with pytest.raises(ValueError, match=message):
        cpu_flash_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("H", [8, 24])
def test_head_dims_off_the_16_channel_grid(H, build):
    q, k, v = _inputs(seed=H, H=H)
    chex.assert_trees_all_close(cpu_flash_attention(q, k, v, **_small(build)), dense.attention(q, k, v),
                                atol=TOL, rtol=TOL)


def test_unknown_argument():
    q, k, v = _inputs()
    with pytest.raises(TypeError, match="not_an_option"):
        cpu_flash_attention(q, k, v, not_an_option=1)


def test_missing_compiler_is_a_clear_import_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(native.NativeKernelUnavailable, match="C\\+\\+17 compiler"):
        native.library_path("cpu_flash_attention")


def test_unwritable_cache_is_a_clear_import_error(monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("LONGCTX_JAX_CACHE", str(blocker / "cache"))
    with pytest.raises(native.NativeKernelUnavailable, match="LONGCTX_JAX_CACHE"):
        native.library_path("cpu_flash_attention")


@pytest.mark.parametrize("build", BUILDS)
def test_vmap_runs_the_kernel_per_element(build):
    q, k, v = _inputs(seed=12)
    stacked = [jnp.stack([x, x[::-1]]) for x in (q, k, v)]
    got = jax.vmap(lambda q, k, v: cpu_flash_attention(q, k, v, **_small(build)))(*stacked)
    want = jnp.stack([dense.attention(q, k, v), dense.attention(q[::-1], k[::-1], v[::-1])])
    chex.assert_trees_all_close(got, want, atol=TOL, rtol=TOL)


def test_environment_variable_picks_the_build(monkeypatch):
    monkeypatch.setenv(cpu_flash_plan.ENV, "portable")
    q, k, v = _inputs(seed=13)
    lowered = jax.jit(lambda q, k, v: cpu_flash_attention(q, k, v)).lower(q, k, v).as_text()
    assert f"longctx_cpu_flash_attention_{cpu_flash_plan.plan('portable').tag}" in lowered
    if DEFAULT_BUILD.isa != "portable":
        assert f"longctx_cpu_flash_attention_{DEFAULT_BUILD.tag}" not in lowered
    chex.assert_trees_all_close(cpu_flash_attention(q, k, v), dense.attention(q, k, v), atol=TOL, rtol=TOL)


def test_isa_the_cpu_cannot_run_is_refused_before_work():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match=r"'sse9' is not a cpu_flash ISA; valid: \('portable', 'avx2'"):
        cpu_flash_attention(q, k, v, isa="sse9")
    missing = [isa for isa in cpu_flash_plan.ISAS if isa not in cpu_flash_plan.supported_isas()]
    if not missing:
        pytest.skip("this CPU runs every ISA")
    with pytest.raises(ValueError, match=f"isa='{missing[-1]}' needs CPU flags .* it runs"):
        cpu_flash_attention(q, k, v, isa=missing[-1])
