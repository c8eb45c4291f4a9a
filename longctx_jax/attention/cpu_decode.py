"""Decode-step attention on CPU: a few query rows at explicit positions over a KV cache in place.

    out[b, t, n] = sum_s softmax_s(scale * q[b, t, n] . k[b, s, n // G]) v[b, s, n // G]

over the keys `allowed` at their true positions (causal, sliding window, StreamingLLM sinks;
`attention/masks.py`), the same numbers as `dense.attention`. A decoded token reads every
cached key and value once, so the cost is one pass over the cache: the kernel
(`LongctxCpuDecodeAttention` in `kernels/cpu_flash_attention.cc`, the same per-ISA library
as cpu_flash) reads the `[B, S, K, H]` cache rows where they lie, with work items of
(batch, 256-key chunk) spread over XLA's thread pool and merged by their log-sum-exp
(flash-decoding's split over keys, Dao et al. 2023). A chunk works on the span of its keys that
some query row may attend to, so a cache's empty slots (a `Generator` cache larger than what
is written so far) and keys outside every window are not read. The span's K and V rows are
first streamed into L2 by one sequential pass of loads; then, per KV head, its query rows are
held in registers against 4 / 8 / 16 keys at a time (the vector width), whose logits come out
of pair sums kept in registers (a transposed sum), and its rows' outputs are held in registers
over the span's values. Head dims too wide for the registers take general loops. XLA's own dense path
transposes the cache for its batched dots (a diagnostic run: 6 ms per SmolLM2 layer at 8K
cached tokens, several times the cache's read time; docs/kv_cache.md). `dispatch`'s "auto"
sends CPU calls with at most `AutoPolicy.cpu_decode_max_q` query rows here.

Gradients: blockwise's tile recomputation from the kernel's output and lse.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from longctx_jax.attention.blockwise import blockwise_attention_backward
from longctx_jax.attention.cpu_flash import LIBRARY, call_kernel, resolve_build
from longctx_jax.attention.kernels import native
from longctx_jax.attention.kernels.cpu_flash_plan import KernelBuild
from longctx_jax.attention.spec import AttentionSpec, implementation
from longctx_jax.typing import Array

_SYMBOL = "LongctxCpuDecodeAttention"


def target(build: KernelBuild) -> str:
    """Registers the decode handler of `build`'s library (built once per machine and build)."""
    return native.register(LIBRARY, _SYMBOL, build.compiler_flags, build.tag)


def _kernel(q, k, v, q_pos, k_pos, causal, window, sinks, scale, build):
    return call_kernel(target(build), q, k, v, q_pos.astype(jnp.int32), k_pos.astype(jnp.int32),
                       causal=causal, window=np.int64(window), sinks=np.int64(sinks), scale=np.float32(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _attention(q, k, v, q_pos, k_pos, causal, window, sinks, scale, build):
    return _kernel(q, k, v, q_pos, k_pos, causal, window, sinks, scale, build)


def _attention_fwd(q, k, v, q_pos, k_pos, causal, window, sinks, scale, build):
    out, lse = _kernel(q, k, v, q_pos, k_pos, causal, window, sinks, scale, build)
    return (out, lse), (q, k, v, q_pos, k_pos, out, lse)


def _attention_bwd(causal, window, sinks, scale, build, residuals, cotangents):
    q, k, v, q_pos, k_pos, out, lse = residuals
    d_out, d_lse = cotangents
    spec = AttentionSpec(causal=causal, window=window or None, sinks=sinks, scale=scale,
                         q_positions=q_pos, k_positions=k_pos)
    dq, dk, dv = blockwise_attention_backward(q, k, v, out, lse, d_out, d_lse, spec)
    zeros = [np.zeros(p.shape, jax.dtypes.float0) for p in (q_pos, k_pos)]
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), *zeros


_attention.defvjp(_attention_fwd, _attention_bwd)

_UNSUPPORTED = frozenset({"bias", "alibi_slopes", "segment_ids", "kv_segment_ids", "mask", "logit_soft_cap"})


@implementation(name="cpu_decode", unsupported=_UNSUPPORTED)
def cpu_decode_attention_with_lse(q: Array, k: Array, v: Array, spec: AttentionSpec, *,
                                  isa: str | KernelBuild | None = None) -> tuple[Array, Array]:
    """`cpu_decode_attention` that also returns lse `[B, T, N]` float32 (rows with no key: 0)."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    if K == 0 or N % K:
        raise ValueError(f"query heads {N} must be a multiple of key/value heads {K}")
    q_pos, k_pos = spec.positions(B, T, S)
    out, lse = _attention(q, k, v, q_pos, k_pos, spec.causal, int(spec.window or 0), int(spec.sinks),
                          spec.scale_for(H), resolve_build(isa))
    return out.astype(q.dtype), lse


@implementation(name="cpu_decode", unsupported=_UNSUPPORTED)
def cpu_decode_attention(q: Array, k: Array, v: Array, spec: AttentionSpec, *,
                         isa: str | KernelBuild | None = None) -> Array:
    """Attention of a few query rows over a cache, with the semantics of `dense.attention`.

    Args:
      q, k, v: queries `[B, T, N, H]` (T small: a decode step), keys and values `[B, S, K, H]`
        (the cache, read in place), N % K == 0.
      spec: an `AttentionSpec` using `causal`, `window`, `sinks`, `scale` and the query / key
        positions (default 0 .. T-1 and 0 .. S-1); other fields raise `ValueError`.
      isa: the library build, as for `cpu_flash` (None: the widest ISA this CPU runs).

    Returns:
      `[B, T, N, H]` in q's dtype.
    """
    return cpu_decode_attention_with_lse(q, k, v, spec, isa=isa)[0]


target(resolve_build())  # import fails (NativeKernelUnavailable) where the kernel cannot be built
