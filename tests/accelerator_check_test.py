"""GPU and TPU readiness checked on a CPU: lowering for "cuda" / "tpu", Triton compiled to PTX.

Run with `make accelerator-check` (its own venv, `.venv-accel`, with the `accelerator-check`
extra: the JAX CUDA plugin's Triton compiler and ptxas). The default suite deselects the
`accelerator` marker. Nothing here runs a kernel: it proves that every supported flash
configuration compiles within sm80 / sm90 limits, that splash attention lowers for TPU,
and that a whole decoder training step with ring attention lowers for a GPU and a TPU mesh.
With `ACCEL_CHECK_OUT=dir` (the make target sets runs/accelerator_check) each flash case also
writes what the compiler reported, `dir/<case>.json`.
"""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from configs import tiny
from longctx_jax import sharding
from longctx_jax.attention.flash import flash_attention
from longctx_jax.attention.kernels import gpu_plan, triton_inspect
from longctx_jax.attention.kernels.splash import splash_attention
from longctx_jax.attention.masks import AttentionMask
from longctx_jax.positional.alibi import alibi_slopes
from longctx_jax.train.optimizer import make_optimizer
from longctx_jax.train.step import abstract_train_state, make_train_step
from longctx_jax.train.trainer import decoder_from_config

pytestmark = pytest.mark.accelerator

B, T, K = 1, 256, 2
# Spill stores per thread ptxas may report. sm80's pipelined dq / dkv loops spill a few hundred
# bytes at 255 registers whatever the warps (measured: dq H=64 with every mask feature, 224 B
# at 8 warps, 256 B at 4); kilobytes (H=256 at 4 warps before the plan's register rule) fail.
MAX_SPILL_BYTES = 512
_KERNELS = {"flash_forward": "forward", "flash_dq": "dq", "flash_dkv": "dkv"}


@pytest.fixture(scope="module", autouse=True)
def _cuda_compiler():
    if not triton_inspect.have_cuda_compiler():
        pytest.fail('the JAX CUDA plugin is not installed: run `make accelerator-check` '
                    '(pip install -e ".[accelerator-check]")')


def _features(name: str, n_heads: int) -> dict:
    ids = np.repeat(np.arange(4), T // 4)[None]
    every = {
        "window": dict(window=96, sinks=4),
        "alibi": dict(alibi_slopes=alibi_slopes(n_heads)),
        "segments": dict(segment_ids=jnp.asarray(ids)),
        "softcap": dict(logit_soft_cap=30.0),
        "positions": dict(q_positions=jnp.arange(T)[None] + 7, k_positions=jnp.arange(T)[None] + 7),
        "noncausal": dict(causal=False),
    }
    if name == "all":  # causal + window + sinks + ALiBi + segments + soft-cap in one kernel
        return {**every["window"], **every["alibi"], **every["segments"], **every["softcap"]}
    return every[name]


CASES = (
    [(H, G, dtype, "all") for H in (64, 128, 256) for G in (1, 2, 4, 8) for dtype in ("bfloat16", "float16")]
    + [(H, 4, "bfloat16", f) for H in (64, 128, 256) for f in ("window", "alibi", "segments", "softcap",
                                                                "positions", "noncausal")]
)


@pytest.mark.parametrize("H,G,dtype,features", CASES, ids=[f"H{c[0]}-G{c[1]}-{c[2]}-{c[3]}" for c in CASES])
def test_flash_forward_and_backward_compile_within_gpu_limits(H, G, dtype, features):
    dtype = jnp.dtype(dtype)
    N = K * G
    kwargs = _features(features, N)
    q = jax.ShapeDtypeStruct((B, T, N, H), dtype)
    kv = jax.ShapeDtypeStruct((B, T, K, H), dtype)

    def loss(q, k, v):
        out = flash_attention(q, k, v, interpret=False, **kwargs)
        return jnp.sum(out.astype(jnp.float32))

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv).lower(lowering_platforms=("cuda",))
    modules = triton_inspect.triton_modules(lowered)
    assert sorted(m.name for m in modules) == sorted(_KERNELS)
    plan = gpu_plan.plan(64, 64, H, dtype.itemsize)
    report = []
    for module in modules:
        launch = getattr(plan, _KERNELS[module.name])
        assert (module.num_warps, module.num_stages) == (launch.num_warps, launch.num_stages)
        modelled = gpu_plan.smem_bytes(_KERNELS[module.name], launch.block_q, launch.block_k, H,
                                       dtype.itemsize, launch.num_stages)
        for arch, limit in gpu_plan.SMEM_LIMITS.items():
            kernel = triton_inspect.compile_module(module, arch)
            where = f"{module.name} {arch} H={H} G={G} {dtype.name} {features}"
            assert kernel.smem_bytes <= limit, f"{where}: {kernel.smem_bytes} B of shared memory > {limit}"
            assert kernel.smem_bytes <= modelled, f"{where}: {kernel.smem_bytes} B > modelled {modelled}"
            assert kernel.registers <= triton_inspect.MAX_REGISTERS_PER_THREAD, where
            assert kernel.registers * 32 * kernel.num_warps <= triton_inspect.REGISTERS_PER_SM, where
            assert kernel.spill_bytes <= MAX_SPILL_BYTES, f"{where}: spills {kernel.spill_bytes} B"
            report.append(dict(kernel=module.name, arch=arch, launch=launch.__dict__,
                               smem_bytes=kernel.smem_bytes, modelled_smem_bytes=modelled,
                               registers=kernel.registers, spill_bytes=kernel.spill_bytes))
    if out_dir := os.environ.get("ACCEL_CHECK_OUT"):
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"H{H}-G{G}-{dtype.name}-{features}.json"), "w") as f:
            case = dict(head_dim=H, groups=G, dtype=dtype.name, features=features, kernels=report)
            json.dump(case, f, indent=1)


def test_splash_attention_lowers_for_tpu():
    q = jax.ShapeDtypeStruct((2, 512, 8, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((2, 512, 2, 128), jnp.bfloat16)
    ids = jnp.asarray(np.repeat([[0, 1]], 256, axis=1).repeat(2, axis=0))

    def loss(q, k, v):
        out = splash_attention(q, k, v, AttentionMask(causal=True, window=128), scale=128**-0.5,
                               segment_ids=ids, kv_segment_ids=None, logit_soft_cap=30.0,
                               block_q=128, block_k=128)
        return jnp.sum(out.astype(jnp.float32))

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv).lower(lowering_platforms=("tpu",))
    text = lowered.as_text()
    # forward, dQ and dK/dV Mosaic kernels
    assert text.count("tpu_custom_call") >= 3, text.count("tpu_custom_call")


@pytest.mark.parametrize("platform,device_kind", [("cuda", "NVIDIA H100 80GB HBM3"), ("tpu", "TPU v5 lite")])
def test_decoder_train_step_with_ring_attention_lowers_for_a_mesh(platform, device_kind):
    """One bf16 training step of the tiny decoder on an abstract (2 data x 4 sequence) mesh."""
    config = tiny.get_config()
    config.model.vocab_size = 256
    config.model.dtype = "bfloat16"
    config.model.attention.impl = "ring"
    graphdef, params = nnx.split(decoder_from_config(config, 256))
    tx = make_optimizer(config.optim, int(config.train.steps))
    device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=None, platform=platform)
    mesh = AbstractMesh((2, 1, 4, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 4,
                        abstract_device=device)
    state = abstract_train_state(params, tx, mesh)
    names = ("inputs", "targets", "positions", "segment_ids", "loss_mask")
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {n: jax.ShapeDtypeStruct((4, 1024), jnp.int32, sharding=batch_sharding) for n in names}
    step = make_train_step(graphdef, tx, use_segment_ids=True)
    with jax.sharding.use_abstract_mesh(mesh):
        lowered = step.trace(state, batch).lower(lowering_platforms=(platform,))
    text = lowered.as_text()
    assert "collective_permute" in text  # the ring's K/V hops
    # The ring's per-shard kernel: Triton flash (forward, dQ, dK/dV) on a GPU mesh, jnp on TPU.
    assert all((name in text) == (platform == "cuda") for name in _KERNELS), platform
    chex.assert_equal(lowered.out_info[1]["train_loss"].shape, ())
