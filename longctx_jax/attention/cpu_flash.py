"""Fused flash attention for CPUs: one C++ kernel per call through the XLA FFI.

    out = softmax(scale * q k^T, masked) v,   lse = log sum_j exp(scale * q k_j)

The FlashAttention recurrence (Dao et al. 2022) as in `blockwise.py`, but with each
`[block_q, block_k]` tile of one head computed, softmaxed and multiplied by V while it sits
in the core's cache (`kernels/cpu_flash_attention.cc`), and the (batch, head, query block)
work items spread over XLA's intra-op threads. The jnp blockwise loop cannot do that: every
XLA op of a tile is a separate pass over a tile too large for cache, synchronised across
threads. Masks: causal and a sliding `window` under default positions (queries 0..T-1 and
keys 0..S-1, a prompt attending to itself as in prefill); other options raise `ValueError`
naming the implementations that take them.

Gradients reuse blockwise's tile-recomputing backward from the kernel's output and lse
(`blockwise_attention_backward`), so this is a drop-in `impl="cpu_flash"` for training too.
The kernel computes in float32 (bfloat16 inputs are upcast, the output cast back); head dims
that are not a multiple of 16 are zero-padded for it. The kernel is built per instruction set
(portable, AVX2, AVX-512) with its register tile and default blocks from this machine's caches
(`kernels/cpu_flash_plan.py`): the widest ISA the CPU runs, or `$LONGCTX_CPU_FLASH_ISA`, or
the `isa` argument. Importing this module builds the default one with the system C++ compiler
(once per machine and build, cached: `kernels/native.py`); without a compiler the import
raises `NativeKernelUnavailable`, an `ImportError`, so `dispatch`'s "auto" falls back to
blockwise. Measured against PyTorch's fused CPU sdpa by
`configs/bench_attention.py` and, inside SmolLM2's prefill, by `configs/bench_forward.py`
(docs/benchmarks.md, docs/kv_cache.md).
"""

import ctypes
import functools

import jax
import jax.numpy as jnp
import numpy as np

from longctx_jax.attention.blockwise import blockwise_attention_backward
from longctx_jax.attention.kernels import cpu_flash_plan, native
from longctx_jax.attention.kernels.cpu_flash_plan import KernelBuild
from longctx_jax.attention.spec import AttentionSpec, implementation
from longctx_jax.typing import Array

LIBRARY = "cpu_flash_attention"  # one source, per-ISA builds; cpu_decode's handler lives in it too


def target(build: KernelBuild) -> str:
    """Builds, loads and registers `build` (once per process); returns its FFI target name.

    Raises:
      NativeKernelUnavailable: no compiler, a failed build, or a library whose compiled-in
        constants are not the build's.
    """
    name = native.register(LIBRARY, "LongctxCpuFlashAttention", build.compiler_flags, build.tag)
    geometry = (ctypes.c_int64 * 4)()
    native.load(LIBRARY, build.compiler_flags, build.tag).LongctxCpuFlashGeometry(geometry)
    if tuple(geometry) != (build.lanes, build.rows, build.block_q, build.block_k):
        raise native.NativeKernelUnavailable(
            f"library for {build.tag} reports lanes, rows, blocks {tuple(geometry)}; rebuild the cache"
        )
    return name


def resolve_build(isa: str | KernelBuild | None = None) -> KernelBuild:
    """The build a call runs: `isa` itself, the plan for an ISA name, or the default plan.

    Raises:
      ValueError: an unknown ISA, or one this CPU cannot run (names what it can).
    """
    if isinstance(isa, KernelBuild):
        return isa
    if isa is not None and not isinstance(isa, str):
        raise ValueError(f"isa must be one of {cpu_flash_plan.ISAS}, a KernelBuild or None, got {isa!r}")
    return cpu_flash_plan.plan(isa)


DEFAULT_BUILD = resolve_build()
target(DEFAULT_BUILD)  # import fails (NativeKernelUnavailable) where the kernel cannot be built


def call_kernel(target_name: str, q: Array, k: Array, v: Array, *operands: Array, **attributes
                ) -> tuple[Array, Array]:
    """Runs an attention handler of this library (`target_name`) on q, k, v and `operands`.

    Both handlers (`LongctxCpuFlashAttention`, and cpu_decode's `LongctxCpuDecodeAttention`)
    take float32 `[B, T|S, heads, H]` q, k, v with H a multiple of 16 and return out `[B, T, N, H]`
    and lse `[B, T, N]`. This casts to float32, zero-pads the channels (zero channels change
    no dot product) and strips the padding from out.
    """
    B, T, N, H = q.shape
    pad = [(0, 0)] * 3 + [(0, -H % 16)]  # the micro-kernels take 16 channels at a time
    q, k, v = (jnp.pad(x.astype(jnp.float32), pad) for x in (q, k, v))
    call = jax.ffi.ffi_call(
        target_name,
        (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((B, T, N), jnp.float32)),
        vmap_method="sequential",
    )
    out, lse = call(q, k, v, *operands, **attributes)
    return out[..., :H], lse


def _kernel(q: Array, k: Array, v: Array, causal: bool, window: int, scale: float, block_q: int,
            block_k: int, build: KernelBuild) -> tuple[Array, Array]:
    return call_kernel(target(build), q, k, v, causal=causal, window=np.int64(window),
                       scale=np.float32(scale), block_q=np.int64(block_q), block_k=np.int64(block_k))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _attention(q, k, v, causal, window, scale, block_q, block_k, build):
    return _kernel(q, k, v, causal, window, scale, block_q, block_k, build)


def _attention_fwd(q, k, v, causal, window, scale, block_q, block_k, build):
    out, lse = _kernel(q, k, v, causal, window, scale, block_q, block_k, build)
    return (out, lse), (q, k, v, out, lse)


def _attention_bwd(causal, window, scale, block_q, block_k, build, residuals, cotangents):
    q, k, v, out, lse = residuals
    d_out, d_lse = cotangents
    spec = AttentionSpec(causal=causal, window=window or None, scale=scale)
    dq, dk, dv = blockwise_attention_backward(q, k, v, out, lse, d_out, d_lse, spec)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_attention.defvjp(_attention_fwd, _attention_bwd)


_UNSUPPORTED = frozenset(
    {"sinks", "bias", "alibi_slopes", "segment_ids", "kv_segment_ids", "q_positions", "k_positions", "mask",
     "logit_soft_cap"}
)


@implementation(name="cpu_flash", unsupported=_UNSUPPORTED)
def cpu_flash_attention_with_lse(
    q: Array, k: Array, v: Array, spec: AttentionSpec, *, block_q: int | None = None,
    block_k: int | None = None, isa: str | KernelBuild | None = None,
) -> tuple[Array, Array]:
    """`cpu_flash_attention` that also returns lse `[B, T, N]` float32 (differentiable)."""
    H = q.shape[-1]
    if (block_q is not None and block_q < 1) or (block_k is not None and (block_k < 16 or block_k % 16)):
        raise ValueError(
            f"block_q must be positive and block_k a positive multiple of 16 (or None: the build's "
            f"defaults), got {block_q}, {block_k}"
        )
    build = resolve_build(isa)
    out, lse = _attention(q, k, v, spec.causal, int(spec.window or 0), spec.scale_for(H), int(block_q or 0),
                          int(block_k or 0), build)
    return out.astype(q.dtype), lse


@implementation(name="cpu_flash", unsupported=_UNSUPPORTED)
def cpu_flash_attention(
    q: Array, k: Array, v: Array, spec: AttentionSpec, *, block_q: int | None = None,
    block_k: int | None = None, isa: str | KernelBuild | None = None,
) -> Array:
    """Fused CPU attention with the semantics of `dense.attention` for causal / window masks.

    Args:
      q, k, v: queries `[B, T, N, H]`, keys and values `[B, S, K, H]`, N % K == 0.
      spec: an `AttentionSpec` (or its fields as keyword arguments) using only `causal`,
        `window` and `scale`, under default positions; other fields raise `ValueError`.
      block_q, block_k: tile sizes (block_k a multiple of 16); None: the build's defaults,
        sized from this machine's caches (`cpu_flash_plan.default_blocks`).
      isa: the kernel build: "portable", "avx2", "avx512", a `KernelBuild`, or None for
        `$LONGCTX_CPU_FLASH_ISA`, else the widest ISA this CPU runs. An ISA the CPU cannot run
        raises `ValueError` naming what it can.

    Returns:
      `[B, T, N, H]` in q's dtype.
    """
    return cpu_flash_attention_with_lse(q, k, v, spec, block_q=block_q, block_k=block_k, isa=isa)[0]
