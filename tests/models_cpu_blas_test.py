"""cpu_blas (the projections through numpy's OpenBLAS) equals float64 numpy and XLA's einsum:
products, gradients, the decoder's forward and training gradients; and its "auto" rule."""

import ctypes

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.attention.kernels import native
from longctx_jax.models import cpu_blas
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder

pytestmark = pytest.mark.skipif(not cpu_blas.available(), reason="no OpenBLAS beside numpy or no compiler")


def _rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("transpose_w", [False, True])
@pytest.mark.parametrize("M,K,N", [(1, 7, 5), (64, 96, 33), (300, 576, 192),  # sgemm from 64 rows
                                   (1, 576, 1536), (3, 1000, 70), (63, 300, 129), (1, 40_000, 3)])  # few-row
@pytest.mark.parametrize("jit", [False, True])
def test_matmul_equals_float64(M, K, N, transpose_w, jit):
    x = _rand((M, K), 0)
    w = _rand((N, K) if transpose_w else (K, N), 1)
    f = (jax.jit(cpu_blas.matmul, static_argnames="transpose_w") if jit else cpu_blas.matmul)
    y = np.asarray(f(jnp.asarray(x), jnp.asarray(w), transpose_w=transpose_w))
    want = x.astype(np.float64) @ (w.T if transpose_w else w).astype(np.float64)
    chex.assert_shape(y, (M, N))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("transpose_w", [False, True])
def test_matmul_gradients_equal_xla(transpose_w):
    x, w = jnp.asarray(_rand((70, 40), 2)), jnp.asarray(_rand((40, 24), 3))
    w = w.T if transpose_w else w
    r = jnp.asarray(_rand((70, 24), 4))

    def loss(mm, x, w):
        return jnp.sum(mm(x, w) * r)

    ours = jax.grad(loss, argnums=(1, 2))(lambda a, b: cpu_blas.matmul(a, b, transpose_w=transpose_w), x, w)
    xla = jax.grad(loss, argnums=(1, 2))(lambda a, b: a @ (b.T if transpose_w else b), x, w)
    chex.assert_trees_all_close(ours, xla, atol=1e-4, rtol=1e-5)


def test_few_row_products_run_side_by_side_and_fill_every_output():
    """Several few-row calls in one program (XLA may run them at once on its pool) all finish, and
    each writes every output element (NaN-poisoned inputs elsewhere would show)."""
    x = jnp.asarray(_rand((2, 576), 9))
    ws = [jnp.asarray(_rand((576, n), 10 + n)) for n in (1536, 192, 577)]
    outs = jax.jit(lambda x, *ws: [cpu_blas.matmul(x, w) for w in ws])(x, *ws)
    for out, w in zip(outs, ws, strict=True):
        want = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert "LongctxCpuGemv" in jax.jit(lambda x: cpu_blas.matmul(x, ws[0])).lower(x).as_text()
    assert "LongctxCpuBlasMatmul" in jax.jit(lambda x: cpu_blas.matmul(x, ws[0])).lower(
        jnp.zeros((cpu_blas.MIN_ROWS, 576))).as_text()


def test_sgemm_row_blocks_side_by_side_leave_openblas_threads_as_found():
    """Several sgemm calls in one program, forward and gradients (whose x^T dy reads A transposed),
    each split into row blocks over XLA's threads: all equal float64, and OpenBLAS's thread count
    (which the handler holds at one during its calls) is what it was before."""
    openblas = ctypes.CDLL(cpu_blas.openblas_library())
    threads_before = openblas.scipy_openblas_get_num_threads64_()
    x = jnp.asarray(_rand((193, 130), 20))
    ws = [jnp.asarray(_rand((130, n), 21 + n)) for n in (96, 65, 257)]

    def loss(x, *ws):
        return sum(jnp.sum(jnp.sin(cpu_blas.matmul(x, w))) for w in ws)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(x, *ws)
    x64, ws64 = np.asarray(x, np.float64), [np.asarray(w, np.float64) for w in ws]
    dys = [np.cos(x64 @ w) for w in ws64]
    want = [sum(dy @ w.T for dy, w in zip(dys, ws64, strict=True))] + [x64.T @ dy for dy in dys]
    for got, expected in zip(grads, want, strict=True):
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert openblas.scipy_openblas_get_num_threads64_() == threads_before


def test_matmul_under_vmap():
    x, w = jnp.asarray(_rand((3, 65, 16), 5)), jnp.asarray(_rand((16, 8), 6))
    chex.assert_trees_all_close(jax.vmap(lambda a: cpu_blas.matmul(a, w))(x), x @ w, atol=1e-5, rtol=1e-5)


SUBSCRIPTS = {  # every projection of the decoder, stored [in, out] and as decode's [out, in] copies
    "BTD,DNH->BTNH": ((2, 40, 24), (24, 4, 6)),
    "BTNH,NHD->BTD": ((2, 40, 4, 6), (4, 6, 24)),
    "BTD,DF->BTF": ((2, 40, 24), (24, 56)),
    "BTD,VD->BTV": ((2, 40, 24), (97, 24)),
    "BTD,NHD->BTNH": ((2, 40, 24), (4, 6, 24)),
    "BTNH,DNH->BTD": ((2, 40, 4, 6), (24, 4, 6)),
}


@pytest.mark.parametrize("rows", [1, 40])  # the few-row handler, sgemm
@pytest.mark.parametrize("subscripts", sorted(SUBSCRIPTS))
def test_einsum_equals_jnp_einsum(subscripts, rows):
    x_shape, w_shape = SUBSCRIPTS[subscripts]
    x_shape = (x_shape[0], rows, *x_shape[2:])
    x, w = jnp.asarray(_rand(x_shape, 7)), jnp.asarray(_rand(w_shape, 8))
    ours = cpu_blas.einsum(subscripts, x, w, "cpu_blas")
    want = jnp.einsum(subscripts, x, w, precision="highest")
    chex.assert_trees_all_close(ours, want, atol=1e-5, rtol=1e-5)
    assert "ffi" in str(jax.make_jaxpr(lambda a, b: cpu_blas.einsum(subscripts, a, b, "cpu_blas"))(x, w))


def test_einsum_refuses_what_it_cannot_run():
    x, w = jnp.ones((1, 80, 4)), jnp.ones((5, 4))
    with pytest.raises(ValueError, match="takes projections"):
        cpu_blas.einsum("BTD,DE->BET", x, jnp.ones((4, 5)), "cpu_blas")
    with pytest.raises(ValueError, match="float32"):
        cpu_blas.einsum("BTD,VD->BTV", x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), "cpu_blas")
    with pytest.raises(ValueError, match="unknown matmul_impl 'fast'"):
        cpu_blas.einsum("BTD,VD->BTV", x, w, "fast")
    with pytest.raises(ValueError, match="float32 and bfloat16; cast the weight first"):
        cpu_blas.einsum("BTD,VD->BTV", x, w.astype(jnp.bfloat16), "cpu_blas")
    mixed = cpu_blas.einsum("BTD,VD->BTV", x, w.astype(jnp.bfloat16), "auto")  # auto: jnp.einsum's promotion
    assert mixed.dtype == jnp.float32 and float(mixed[0, 0, 0]) == 4.0
    with pytest.raises(ValueError, match="2-D float32"):
        cpu_blas.matmul(jnp.ones((2, 3, 4)), jnp.ones((4, 5)))
    with pytest.raises(ValueError, match="do not multiply"):
        cpu_blas.matmul(jnp.ones((2, 4)), jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="unknown model.matmul_impl 'mkl'"):
        ModelConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=8,
                    matmul_impl="mkl")


def test_auto_rule():
    f32 = jnp.float32
    assert not cpu_blas.use_blas("xla", 10_000, f32)
    assert cpu_blas.use_blas("cpu_blas", 1, f32)
    assert not cpu_blas.use_blas("auto", 10_000, jnp.bfloat16)
    # The suite runs 8 CPU devices (conftest): GSPMD cannot split a custom call, so XLA keeps it.
    assert jax.device_count() > 1 and not cpu_blas.use_blas("auto", 10_000, f32)


def test_auto_on_one_device_uses_blas(monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert cpu_blas.use_blas("auto", cpu_blas.MIN_ROWS, jnp.float32)
    assert cpu_blas.use_blas("auto", 1, jnp.float32)  # a decode step: the few-row handler
    assert not cpu_blas.use_blas("auto", cpu_blas.MIN_ROWS, jnp.bfloat16)


def test_missing_openblas_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cpu_blas.glob, "glob", lambda pattern: [])
    with pytest.raises(native.NativeKernelUnavailable, match="no scipy-openblas64 library"):
        cpu_blas.openblas_library()


@pytest.mark.parametrize("tie", [True, False])
def test_decoder_forward_and_gradients_equal_xla(tie):
    cfg = ModelConfig(vocab_size=101, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=160,
                      tie_embeddings=tie, matmul_impl="xla")
    xla = Decoder(cfg, rngs=nnx.Rngs(0))
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Decoder(cfg.replace(matmul_impl="cpu_blas"),
                                                           rngs=nnx.Rngs(0))))
    blas = nnx.merge(graphdef, nnx.state(xla))
    tokens = jax.random.randint(jax.random.key(1), (2, 48), 0, cfg.vocab_size)
    assert "ffi" in str(jax.make_jaxpr(lambda t: blas(t))(tokens))

    def loss(model):
        logits = model(tokens)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1))

    chex.assert_trees_all_close(jax.jit(lambda t: blas(t))(tokens), xla(tokens), atol=1e-4, rtol=1e-4)
    chex.assert_trees_all_close(nnx.grad(loss)(blas), nnx.grad(loss)(xla), atol=1e-5, rtol=1e-4)
