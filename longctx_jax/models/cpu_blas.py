"""The decoder's projections on CPU through the BLAS numpy ships (OpenBLAS), not XLA:CPU's GEMM.

    y[M, N] = x[M, K] @ w[K, N]          (or x @ w^T for a tied output layer)

Why: issue #20 found XLA:CPU's float32 GEMM below torch's (MKL) rate on SmolLM2's prefill
shapes, under every XLA flag that selects another GEMM library (`configs/bench_gemm.py`,
docs/benchmarks.md). The gap is in the GEMM routine itself, not in fusion or layout: a plain
2-D dot with nothing around it. numpy's wheels carry a tuned OpenBLAS (scipy-openblas, ILP64,
`DYNAMIC_ARCH`: its kernels picked at load time for the CPU it runs on), which on the same
machine runs these shapes at or above torch's rate. One C++ FFI handler (`cpu_blas_matmul.cc`,
built like the attention kernels, `attention/kernels/native.py`) calls its `cblas_sgemm`,
whose address Python reads from the library numpy loaded; nothing new is installed. The
handler splits the rows of the product among XLA's own threads, each calling sgemm with OpenBLAS
held to one thread (`openblas_set_num_threads_local`, restored after): OpenBLAS's own workers,
which spin about 0.1 s after each call, would otherwise take a core from the XLA work that
follows (SmolLM2 prefill at 2K 4.3 s against 3.2-3.3 s, at 8K 23.2 against 21.8 s; interleaved
diagnostic, 2026-12-06).

`matmul` is differentiable (its gradients are two more sgemm calls: dx = dy w^T, dw = x^T dy)
and float32 only. `use_blas` is the "auto" rule the decoder applies per projection: on a
single-device CPU backend, float32, when the library is found.

Decode's few-row products (fewer than `MIN_ROWS` rows) do not go to sgemm: they are
memory-bound (each weight is read once per token), and through OpenBLAS a SmolLM2 decode step
at 8K cached was slower than XLA's dot (118-142 ms per token against 91-98 ms, two runs each,
diagnostic). They go to a second handler in the same file, `LongctxCpuGemv`, which streams
contiguous slices of the weight on XLA's own thread pool (x @ w: slices of w's rows summed
into per-slice partial outputs; x @ w^T, the tied output layer: slices of output columns).
On a multi-device mesh XLA keeps every GEMM: a custom call has no sharding rule, so GSPMD
would gather its operands.
`ModelConfig.matmul_impl` forces either ("xla", "cpu_blas").

Measured: `configs/bench_gemm.py` (per shape, against torch in the same run) and
`configs/bench_forward.py` (SmolLM2's prefill, runs `3-xla-gemm` and `4-cpu-blas` in
docs/kv_cache.md).
"""

import ctypes
import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np

from longctx_jax.attention.kernels import native
from longctx_jax.typing import Array

IMPLS = ("auto", "xla", "cpu_blas")
MIN_ROWS = 64  # fewer rows (decode) go to the streaming few-row handler, not sgemm
_KERNEL = "cpu_blas_matmul"
_SYMBOL = "LongctxCpuBlasMatmul"
_GEMV_SYMBOL = "LongctxCpuGemv"
_FLAGS = native.NATIVE_FLAGS  # this CPU's vector width for the few-row handler (sgemm is OpenBLAS's own)
_SGEMM = "scipy_cblas_sgemm64_"  # scipy-openblas64's cblas_sgemm (64-bit integers)
# Sets OpenBLAS's thread count, returns the previous one (OpenBLAS 0.3.27 on; for its
# pthreads build, as numpy's, the count every thread uses): the handler runs sgemm on XLA's
# threads, one OpenBLAS thread each, where the library has it (cpu_blas_matmul.cc).
_SET_THREADS = "openblas_set_num_threads_local"


def openblas_library() -> str:
    """Path of the OpenBLAS numpy's wheel bundles (`numpy.libs/` on Linux, `numpy/.dylibs/` on macOS).

    Raises:
      NativeKernelUnavailable: this numpy carries no scipy-openblas64 (e.g. a macOS wheel that
        uses Accelerate, or numpy built against a system BLAS).
    """
    numpy_dir = os.path.dirname(os.path.abspath(np.__file__))
    patterns = (os.path.join(os.path.dirname(numpy_dir), "numpy.libs", "libscipy_openblas64_*"),
                os.path.join(numpy_dir, ".dylibs", "libscipy_openblas64_*"))
    found = sorted(p for pattern in patterns for p in glob.glob(pattern))
    if not found:
        raise native.NativeKernelUnavailable(
            f"no scipy-openblas64 library beside numpy {np.__version__} ({numpy_dir}); "
            "matmul_impl='cpu_blas' needs numpy's Linux or macOS-x86 wheel")
    return found[0]


@functools.cache
def target() -> str:
    """Builds and registers the handler, hands it OpenBLAS's sgemm (once); returns the FFI target.

    Raises:
      NativeKernelUnavailable: no compiler, a failed build, or no OpenBLAS beside numpy.
    """
    openblas = ctypes.CDLL(openblas_library())  # numpy already loaded it: the same handle
    sgemm = getattr(openblas, _SGEMM, None)
    if sgemm is None:
        raise native.NativeKernelUnavailable(f"{openblas._name} has no {_SGEMM}")
    source_dir = os.path.dirname(os.path.abspath(__file__))
    name = native.register(_KERNEL, _SYMBOL, _FLAGS, source_dir=source_dir)
    library = native.load(_KERNEL, _FLAGS, source_dir=source_dir)
    library.LongctxCpuBlasSetSgemm(ctypes.cast(sgemm, ctypes.c_void_p))
    set_threads = getattr(openblas, _SET_THREADS, None)
    library.LongctxCpuBlasSetThreadsLocal(ctypes.cast(set_threads, ctypes.c_void_p) if set_threads else None)
    if not library.LongctxCpuBlasHasSgemm():
        raise native.NativeKernelUnavailable("the cpu_blas library did not keep the sgemm address")
    return name


@functools.cache
def gemv_target() -> str:
    """Registers the few-row handler (the same library as `target`, which it builds first)."""
    target()
    source_dir = os.path.dirname(os.path.abspath(__file__))
    return native.register(_KERNEL, _GEMV_SYMBOL, _FLAGS, source_dir=source_dir)


@functools.cache
def available() -> bool:
    """Whether `matmul` can run here (the handler builds and numpy's OpenBLAS is found)."""
    try:
        target()
    except native.NativeKernelUnavailable:
        return False
    return True


def _sgemm(a: Array, b: Array, trans_a: bool, trans_b: bool) -> Array:
    M = a.shape[1] if trans_a else a.shape[0]
    N = b.shape[0] if trans_b else b.shape[1]
    call = jax.ffi.ffi_call(target(), jax.ShapeDtypeStruct((M, N), jnp.float32), vmap_method="sequential")
    return call(a, b, trans_a=trans_a, trans_b=trans_b)


def _gemv(x_MK: Array, w: Array, transpose_w: bool) -> Array:
    N = w.shape[0] if transpose_w else w.shape[1]
    call = jax.ffi.ffi_call(gemv_target(), jax.ShapeDtypeStruct((x_MK.shape[0], N), jnp.float32),
                            vmap_method="sequential")
    return call(x_MK, w, trans_w=transpose_w)


def _product(x_MK: Array, w: Array, transpose_w: bool) -> Array:
    """Fewer than `MIN_ROWS` rows: the streaming handler on XLA's threads; else OpenBLAS's sgemm."""
    if x_MK.shape[0] < MIN_ROWS:
        return _gemv(x_MK, w, transpose_w)
    return _sgemm(x_MK, w, False, transpose_w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x_MK: Array, w: Array, transpose_w: bool) -> Array:
    return _product(x_MK, w, transpose_w)


def _matmul_fwd(x_MK, w, transpose_w):
    return _product(x_MK, w, transpose_w), (x_MK, w)


def _matmul_bwd(transpose_w, residuals, dy_MN):
    x_MK, w = residuals
    if transpose_w:  # y = x w^T, w [N, K]
        return _sgemm(dy_MN, w, False, False), _sgemm(dy_MN, x_MK, True, False)
    return _sgemm(dy_MN, w, False, True), _sgemm(x_MK, dy_MN, True, False)  # w [K, N]


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul(x_MK: Array, w: Array, *, transpose_w: bool = False) -> Array:
    """`x @ w` (`x @ w.T` with `transpose_w`) by OpenBLAS's sgemm, or with fewer than `MIN_ROWS`
    rows by the streaming few-row handler; float32, differentiable (gradients by sgemm).

    Args:
      x_MK: `[M, K]` float32.
      w: `[K, N]` float32, or `[N, K]` with `transpose_w`.

    Returns:
      `[M, N]` float32.

    Raises:
      ValueError: inputs that are not 2-D float32 or whose inner dimensions differ.
      NativeKernelUnavailable: the handler or the library is not available (see `available`).
    """
    if x_MK.ndim != 2 or w.ndim != 2 or x_MK.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise ValueError(f"cpu_blas.matmul takes 2-D float32 arrays, got x {x_MK.dtype}{list(x_MK.shape)} "
                         f"and w {w.dtype}{list(w.shape)}")
    K = w.shape[1] if transpose_w else w.shape[0]
    if x_MK.shape[1] != K:
        raise ValueError(f"x [M, K] = {list(x_MK.shape)} and w {list(w.shape)} (transpose_w={transpose_w}) "
                         "do not multiply")
    return _matmul(x_MK, w, bool(transpose_w))


def check_impl(impl: str) -> None:
    """Raises ValueError unless `impl` is one of `IMPLS`."""
    if impl not in IMPLS:
        raise ValueError(f"unknown matmul_impl {impl!r}; valid: {IMPLS}")


def use_blas(impl: str, rows: int, dtype) -> bool:
    """Whether a projection of `rows` rows in `dtype` runs through `matmul` under `impl`.

    "xla": never. "cpu_blas": always (float32 only; raises where unavailable). "auto": on a
    single-device CPU backend, float32, when `available()`, whatever the rows (`matmul` picks
    sgemm or the few-row handler by `MIN_ROWS`).

    Raises:
      ValueError: an unknown `impl`, or "cpu_blas" with a dtype other than float32.
      NativeKernelUnavailable: "cpu_blas" where the handler cannot be built or OpenBLAS found.
    """
    check_impl(impl)
    if impl == "xla":
        return False
    if impl == "cpu_blas":
        if jnp.dtype(dtype) != jnp.float32:
            raise ValueError(f"matmul_impl 'cpu_blas' computes in float32, got dtype {jnp.dtype(dtype)}; "
                             "use 'auto' or 'xla' for other dtypes")
        target()
        return True
    del rows  # every row count has a handler (module docstring)
    return (jnp.dtype(dtype) == jnp.float32 and jax.default_backend() == "cpu"
            and jax.device_count() == 1 and available())


def einsum(subscripts: str, x_BTI: Array, w: Array, impl: str, **einsum_kwargs) -> Array:
    """`jnp.einsum(subscripts, x, w, **einsum_kwargs)` for a projection, by `matmul` where
    `use_blas(impl, B * T, dtype)` says so.

    The projections this takes: `"BT<in>,<in><out>->BT<out>"` (x's trailing axes contract with
    w's leading ones, e.g. `"BTD,DNH->BTNH"`, `"BTNH,NHD->BTD"`) and `"BT<in>,<out><in>->BT<out>"`
    (w stored `[out, in]`, x @ w^T: a tied output layer `"BTD,VD->BTV"`, or decode's transposed
    copies, `decoder.DecodeLayout`). Anything else, and every call `use_blas` declines, is `jnp.einsum`;
    under a forced "cpu_blas", another einsum or a weight of another dtype than x is a ValueError.

    Args:
      subscripts: the einsum of the projection; x's first two axes are batch and time.
      x_BTI: `[B, T, *in]`.
      w: the weight, in the layout of `subscripts`.
      impl: "auto", "xla" or "cpu_blas" (`ModelConfig.matmul_impl`).

    Returns:
      What `jnp.einsum` returns (float32 under `matmul`).
    """
    inputs, out = subscripts.replace(" ", "").split("->")
    x_sub, w_sub = inputs.split(",")
    B, T = x_BTI.shape[:2]
    if w.dtype != x_BTI.dtype:
        if impl == "cpu_blas":
            raise ValueError(f"matmul_impl 'cpu_blas' needs x and the weight in one dtype, got "
                             f"{x_BTI.dtype} and {w.dtype}; cast the weight first")
        return jnp.einsum(subscripts, x_BTI, w, **einsum_kwargs)
    if not use_blas(impl, B * T, x_BTI.dtype):
        return jnp.einsum(subscripts, x_BTI, w, **einsum_kwargs)
    contracted = x_sub[2:]
    if w_sub.startswith(contracted) and out == x_sub[:2] + w_sub[len(contracted):]:
        w2 = w.reshape(int(np.prod(w.shape[:len(contracted)])), -1)
        y = matmul(x_BTI.reshape(B * T, -1), w2)
        return y.reshape(B, T, *w.shape[len(contracted):])
    kept = len(w_sub) - len(contracted)
    if kept > 0 and w_sub.endswith(contracted) and out == x_sub[:2] + w_sub[:kept]:
        w2 = w.reshape(int(np.prod(w.shape[:kept])), -1)
        y = matmul(x_BTI.reshape(B * T, -1), w2, transpose_w=True)
        return y.reshape(B, T, *w.shape[:kept])
    if impl == "cpu_blas":
        raise ValueError(f"matmul_impl 'cpu_blas' takes projections 'BT<in>,<in><out>->BT<out>' or "
                         f"'BT<in>,<out><in>->BT<out>', got {subscripts!r}")
    return jnp.einsum(subscripts, x_BTI, w, **einsum_kwargs)
