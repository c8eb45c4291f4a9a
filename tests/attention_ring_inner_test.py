"""Ring attention's per-shard kernel: which one each platform runs, and flash inside the ring.

Forward and gradients against the single-device dense oracle on the 8 fake CPU devices,
with the Pallas flash kernel (interpret mode) as the inner kernel.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import dense, dispatch, ring
from longctx_jax.attention.ring_inner import ring_inner
from longctx_jax.attention.spec import AttentionSpec
from longctx_jax.positional.alibi import alibi_slopes

TOL = {"atol": 1e-5, "rtol": 1e-5}
B, T, N, K, H = 2, 64, 4, 2, 8


def _inputs(kv_heads=K, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (B, T, N, H), jnp.float32),
        jax.random.normal(kk, (B, T, kv_heads, H), jnp.float32),
        jax.random.normal(kv, (B, T, kv_heads, H), jnp.float32),
    )


def _segments():
    """Two documents per row, boundaries inside shards and different per row."""
    rows = [np.repeat([0, 1], [21 + 6 * b, T - 21 - 6 * b]) for b in range(B)]
    return jnp.asarray(np.stack(rows), jnp.int32)


def _value_and_grads(fn, q, k, v):
    weights = jax.random.uniform(jax.random.key(7), q.shape)

    def loss(q, k, v):
        out = fn(q, k, v)
        return jnp.sum(jnp.sin(out) * weights), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


@pytest.mark.parametrize(
    "kwargs, kv_heads",
    [
        # causal + window + segments, GQA (G = 2): the window reaches 3 shards back
        (dict(window=20, segment_ids=_segments()), 2),
        # bidirectional, ALiBi, soft-cap, MQA (G = 4): every shard from both sides
        (dict(causal=False, alibi_slopes=alibi_slopes(N), logit_soft_cap=3.0), 1),
    ],
    ids=["causal_window_segments_gqa", "bidirectional_alibi_softcap_mqa"],
)
def test_ring_with_flash_inside_matches_dense(kwargs, kv_heads):
    q, k, v = _inputs(kv_heads)
    mesh = jax.make_mesh((8,), ("sequence",))

    def ring_fn(q, k, v):
        return ring.ring_attention(q, k, v, mesh=mesh, inner="flash", block_size=16, **kwargs)

    got = _value_and_grads(ring_fn, q, k, v)
    want = _value_and_grads(lambda q, k, v: dense.attention(q, k, v, **kwargs), q, k, v)
    chex.assert_trees_all_close(got, want, **TOL)
    chex.assert_tree_all_finite(got)


@pytest.mark.slow
def test_all_gather_with_flash_inside_matches_dense():
    q, k, v = _inputs()
    mesh = jax.make_mesh((4,), ("sequence",), devices=jax.devices()[:4])
    kwargs = dict(window=24, sinks=2)

    def ring_fn(q, k, v):
        return ring.ring_attention(q, k, v, mesh=mesh, context_parallel="all_gather", inner="flash",
                                   block_size=16, **kwargs)

    got = _value_and_grads(ring_fn, q, k, v)
    want = _value_and_grads(lambda q, k, v: dense.attention(q, k, v, **kwargs), q, k, v)
    chex.assert_trees_all_close(got, want, **TOL)


def test_rows_without_keys_in_some_shards_merge_to_the_oracle():
    """Segments end at shard edges: most shards hold no key for most rows (lse 0 there)."""
    q, k, v = _inputs()
    ids = jnp.asarray(np.repeat(np.arange(8), T // 8)[None].repeat(B, 0))
    mesh = jax.make_mesh((8,), ("sequence",))
    got = _value_and_grads(lambda q, k, v: ring.ring_attention(q, k, v, mesh=mesh, causal=False,
                                                               segment_ids=ids), q, k, v)
    want = _value_and_grads(lambda q, k, v: dense.attention(q, k, v, causal=False, segment_ids=ids), q, k, v)
    chex.assert_trees_all_close(got, want, **TOL)


@pytest.mark.parametrize(
    "platform, fields, own_shard, want",
    [
        ("cuda", {}, False, "flash"),
        ("gpu", {"segment_ids": np.zeros((1, 8), int)}, False, "flash"),
        ("cuda", {"bias": np.zeros((1, 1, 8, 8))}, False, "blockwise"),
        ("tpu", {}, True, "blockwise"),
        ("cpu", {}, True, "cpu_flash"),
        ("cpu", {"window": 16}, True, "cpu_flash"),
        ("cpu", {}, False, "blockwise"),  # cpu_flash takes no explicit positions
        ("cpu", {"segment_ids": np.zeros((1, 8), int)}, True, "blockwise"),
        ("cpu", {"alibi_slopes": np.ones(4)}, True, "blockwise"),
    ],
)
def test_ring_inner_per_platform(platform, fields, own_shard, want):
    spec = AttentionSpec(**fields)
    if want == "cpu_flash" and not dispatch._importable("cpu_flash"):
        want = "blockwise"  # no C++ compiler on this machine
    assert ring_inner(platform, spec, own_shard=own_shard) == want


def test_default_cpu_ring_runs_cpu_flash_on_the_own_shard():
    if not dispatch._importable("cpu_flash"):
        pytest.skip("cpu_flash needs a C++ compiler")
    q, k, v = _inputs()
    mesh = jax.make_mesh((8,), ("sequence",))
    lowered = jax.jit(lambda q, k, v: ring.ring_attention(q, k, v, mesh=mesh, window=20)).lower(q, k, v)
    text = lowered.as_text()
    assert "LongctxCpuFlashAttention" in text or "cpu_flash_attention" in text


@pytest.mark.parametrize(
    "inner, match",
    [("dense", "no lse variant and backward"),
     ("xla", "valid: \\['blockwise', 'cpu_decode', 'cpu_flash', 'flash'\\]"),
     ("cpu_flash", "cannot take.*q_positions"), ("nope", "unknown attention impl")],
)
def test_bad_inner_raises(inner, match):
    q, k, v = _inputs()
    with pytest.raises(ValueError, match=match):
        ring.ring_attention(q, k, v, mesh=jax.make_mesh((8,), ("sequence",)), inner=inner)


@pytest.mark.parametrize("platform, kind", [("cuda", "NVIDIA H100 80GB HBM3"), ("tpu", "TPU v5 lite")])
def test_ring_lowers_with_the_platforms_kernel_inside(platform, kind):
    """On an abstract GPU mesh the ring's forward and backward are the Triton flash kernels."""
    device = jax.sharding.AbstractDevice(device_kind=kind, num_cores=None, platform=platform)
    mesh = jax.sharding.AbstractMesh((8,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,),
                                     abstract_device=device)
    q = jax.ShapeDtypeStruct((1, 1024, 8, 64), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 1024, 2, 64), jnp.bfloat16)

    def loss(q, k, v):
        return jnp.sum(ring.ring_attention(q, k, v, mesh=mesh, window=300).astype(jnp.float32))

    with jax.sharding.use_abstract_mesh(mesh):
        traced = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv)
        lowered = traced.lower(lowering_platforms=(platform,))
    text = lowered.as_text()
    assert "collective_permute" in text
    kernels = {name: text.count(name) for name in ("flash_forward", "flash_dq", "flash_dkv")}
    if platform == "cuda":
        assert all(kernels.values()), kernels
    else:
        assert not any(kernels.values()), kernels
