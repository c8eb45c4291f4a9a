"""Triton launch plan: every supported configuration fits sm80 / sm90; planned tiles keep the numbers."""

import chex
import jax
import jax.numpy as jnp
import pytest

from longctx_jax.attention import dense
from longctx_jax.attention.flash import flash_attention
from longctx_jax.attention.kernels import gpu_plan


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("itemsize", [2, 4])
@pytest.mark.parametrize("blocks", [(64, 64), (128, 128), (16, 16), (128, 32)])
def test_plan_fits_the_smallest_gpu_and_its_registers(head_dim, itemsize, blocks):
    block_q, block_k = blocks
    launches = gpu_plan.plan(block_q, block_k, head_dim, itemsize)
    for name in gpu_plan.KERNELS:
        launch = getattr(launches, name)
        assert launch.block_q <= block_q and launch.block_k <= block_k
        assert block_q % launch.block_q == 0 and block_k % launch.block_k == 0  # tiles the padding
        assert min(launch.block_q, launch.block_k) >= 16
        assert launch.num_warps in (4, 8) and launch.num_stages == 2
        # Written out again rather than calling smem_bytes: 2 buffered copies of each
        # pipelined tile, the resident tiles, one [bq, bk] scratch tile, rows and 1 KiB.
        bq, bk, H, e = launch.block_q, launch.block_k, head_dim, itemsize
        pipelined_rows, resident_rows = {"forward": (bk, bq), "dq": (bk, 2 * bq), "dkv": (bq, 2 * bk)}[name]
        modelled = e * (4 * pipelined_rows * H + resident_rows * H + bq * bk) + 1024
        modelled += 16 * bq if name == "dkv" else 0
        assert modelled == gpu_plan.smem_bytes(name, bq, bk, H, e, 2)
        assert modelled <= gpu_plan.SMEM_LIMITS["sm80"] < gpu_plan.SMEM_LIMITS["sm90"]
        accumulators = (2 * bk if name == "dkv" else bq) * H
        logit_tiles = (2 if name == "forward" else 4) * bq * bk
        assert (accumulators + logit_tiles) / (32 * launch.num_warps) <= 128


def test_plan_keeps_the_requested_tiles_when_they_fit():
    launches = gpu_plan.plan(64, 64, 64, 2)
    # forward: (64 x 64 + 2 x 64 x 64) floats / 128 threads = 96 live floats per thread
    assert launches.forward == gpu_plan.KernelLaunch(64, 64, 4, 2)
    # dkv: (2 x 64 x 64 + 4 x 64 x 64) / 128 = 192 > 128, so 8 warps
    assert launches.dkv == gpu_plan.KernelLaunch(64, 64, 8, 2)


def test_head_dim_256_shrinks_dkv_tiles():
    dkv = gpu_plan.plan(64, 64, 256, 2).dkv
    assert (dkv.block_q, dkv.block_k, dkv.num_warps) == (32, 32, 8)


def test_bad_kernel_and_impossible_budget_raise():
    with pytest.raises(ValueError, match="kernel must be one of"):
        gpu_plan.smem_bytes("dk", 64, 64, 64, 2, 2)
    with pytest.raises(ValueError, match="kernel must be one of"):
        gpu_plan.plan_kernel("fwd", 64, 64, 64, 2)
    with pytest.raises(ValueError, match="shared memory"):
        gpu_plan.plan_kernel("dkv", 64, 64, 1024, 4)


def test_planned_smaller_tiles_match_dense():
    """H = 256 in float32: every kernel runs with tiles smaller than the padding unit, dK/dV smallest."""
    B, T, N, K, H = 1, 70, 4, 1, 256
    plan = gpu_plan.plan(64, 64, H, 4)
    assert plan.dkv.block_q < 64 and plan.forward.block_k < 64
    kq, kk, kv, kd = jax.random.split(jax.random.key(3), 4)
    q = jax.random.normal(kq, (B, T, N, H), jnp.float32)
    k = jax.random.normal(kk, (B, T, K, H), jnp.float32)
    v = jax.random.normal(kv, (B, T, K, H), jnp.float32)
    d_out = jax.random.normal(kd, (B, T, N, H), jnp.float32)

    def value_and_grads(fn, **kwargs):
        def loss(q, k, v):
            out = fn(q, k, v, window=40, sinks=2, logit_soft_cap=5.0, **kwargs)
            return jnp.sum(out * d_out), out

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (_, out), grads = value_and_grads(flash_attention, block_q=64, block_k=64, interpret=True)
    (_, want), want_grads = value_and_grads(dense.attention)
    chex.assert_trees_all_close(out, want, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(grads, want_grads, atol=1e-5, rtol=1e-5)
