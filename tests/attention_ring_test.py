"""Ring / all-gather attention against the single-device dense oracle, on fake CPU meshes."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import dense, ring
from longctx_jax.attention.masks import AttentionMask
from longctx_jax.parallel import layout
from longctx_jax.positional.alibi import alibi_slopes

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _inputs(batch=2, seq=64, heads=4, kv_heads=2, head_dim=8, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (batch, seq, heads, head_dim), jnp.float32),
        jax.random.normal(kk, (batch, seq, kv_heads, head_dim), jnp.float32),
        jax.random.normal(kv, (batch, seq, kv_heads, head_dim), jnp.float32),
    )


def _packed_segments(batch, seq):
    """Three documents per row with different boundaries per row."""
    rows = [np.repeat([0, 1, 2], [seq // 4 + 3 * b, seq // 2, seq - seq // 4 - 3 * b - seq // 2])
            for b in range(batch)]
    return jnp.asarray(np.stack(rows), jnp.int32)


def _value_and_grads(attn_fn, weights, q, k, v, use_jit=True):
    """(output, d/dq,k,v of sum(sin(out) * weights)): weights make every element count."""

    def loss(q, k, v):
        out = attn_fn(q, k, v)
        return jnp.sum(jnp.sin(out) * weights), out

    fn = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    (_, out), grads = (jax.jit(fn) if use_jit else fn)(q, k, v)
    return out, grads


def _check(ring_fn, q, k, v, *, perm=None, use_jit=True, **mask_kwargs):
    """Output and grads of `ring_fn` equal dense attention's.

    With `perm`, `ring_fn` takes and returns arrays in that layout, as a data pipeline
    would feed it; its output and grads are put back in natural order to compare.
    """
    perm = np.arange(q.shape[1]) if perm is None else perm
    weights = jax.random.uniform(jax.random.key(7), q.shape)
    want = _value_and_grads(lambda q, k, v: dense.attention(q, k, v, **mask_kwargs), weights, q, k, v)
    permuted = [layout.apply_permutation(np.asarray(x), perm) for x in (q, k, v, weights)]
    got = _value_and_grads(ring_fn, permuted[3], *permuted[:3], use_jit=use_jit)
    got = jax.tree.map(lambda x: layout.undo_permutation(np.asarray(x), perm), got)
    chex.assert_trees_all_close(got, want, **TOL)
    chex.assert_tree_all_finite(got)


def _mesh(seq_devices, data_devices=1):
    if data_devices == 1:
        return jax.make_mesh((seq_devices,), ("sequence",))
    return jax.make_mesh((data_devices, seq_devices), ("data", "sequence"))


def _case_kwargs(case, batch, seq, heads):
    return {
        "causal": {},
        "noncausal": {"causal": False},
        "window": {"window": 11},
        "noncausal_window": {"causal": False, "window": 9},
        "sinks": {"window": 7, "sinks": 3},
        "packed_alibi": {"segment_ids": _packed_segments(batch, seq), "alibi_slopes": alibi_slopes(heads)},
        "softcap": {"logit_soft_cap": 2.0, "scale": 0.5},
    }[case]


def _run_case(case, context_parallel, layout_name, seq_devices, use_jit=True, kv_heads=2):
    q, k, v = _inputs(kv_heads=kv_heads)
    batch, seq, heads = q.shape[:3]
    mesh = _mesh(seq_devices)
    kwargs = _case_kwargs(case, batch, seq, heads)
    perm = layout.layout_permutation(layout_name, seq, seq_devices)
    positioned = dict(kwargs)
    if layout_name != "natural":
        positioned.update(q_positions=jnp.asarray(perm)[None], k_positions=jnp.asarray(perm)[None])
        if "segment_ids" in kwargs:
            positioned["segment_ids"] = layout.apply_permutation(kwargs["segment_ids"], perm)

    def ring_fn(q, k, v):
        return ring.ring_attention(
            q, k, v, mesh=mesh, context_parallel=context_parallel, block_size=16, **positioned
        )

    _check(ring_fn, q, k, v, perm=perm, use_jit=use_jit, **kwargs)


@pytest.mark.parametrize(
    "case, context_parallel, layout_name",
    [
        ("causal", "ring", "natural"),
        ("causal", "all_gather", "zigzag"),
        ("noncausal_window", "ring", "natural"),
        ("packed_alibi", "ring", "zigzag"),
    ],
)
def test_matches_dense_on_8_devices(case, context_parallel, layout_name):
    _run_case(case, context_parallel, layout_name, seq_devices=8)


def test_matches_dense_on_2_devices_without_jit():
    q, k, v = _inputs(batch=1, seq=8, kv_heads=1)
    mesh = _mesh(2)
    with jax.set_mesh(mesh):  # eager ops on Explicit-sharded arrays need the mesh set
        got = ring.ring_attention(q, k, v, mesh=mesh, causal=False)
    chex.assert_trees_all_close(got, dense.attention(q, k, v, causal=False), **TOL)


def test_data_by_sequence_mesh_under_set_mesh():
    """2 x 4 explicit mesh from `jax.set_mesh`, batch sharded over `data`, mesh=None."""
    q, k, v = _inputs()
    mesh = _mesh(4, data_devices=2)
    segments = _packed_segments(2, 64)
    with jax.set_mesh(mesh):
        q, k, v = (jax.device_put(x, jax.P("data")) for x in (q, k, v))
        seg = jax.device_put(segments, jax.P("data"))

        def ring_fn(q, k, v):
            return ring.ring_attention(q, k, v, window=20, segment_ids=seg)

        _check(ring_fn, q, k, v, window=20, segment_ids=segments)
        out = jax.jit(ring_fn)(q, k, v)
        assert out.sharding.spec[:2] == ("data", "sequence")


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, context_parallel, layout_name, seq_devices",
    itertools.product(
        ["causal", "noncausal", "window", "noncausal_window", "sinks", "packed_alibi", "softcap"],
        ["ring", "all_gather"],
        ["natural", "zigzag", "striped"],
        [2, 4, 8],
    ),
)
def test_matches_dense_all(case, context_parallel, layout_name, seq_devices):
    _run_case(case, context_parallel, layout_name, seq_devices)


@pytest.mark.parametrize(
    "mask, shard_len, contiguous, want",
    [
        (AttentionMask(causal=True), 8, True, ((1, 7),)),
        (AttentionMask(causal=True, window=9), 8, True, ((1, 1),)),
        (AttentionMask(causal=True, window=10), 8, True, ((1, 2),)),
        (AttentionMask(causal=True, window=1), 8, True, ()),
        (AttentionMask(causal=False, window=9), 8, True, ((1, 1), (-1, 1))),
        (AttentionMask(causal=False, window=30), 8, True, ((1, 7),)),
        (AttentionMask(causal=True, window=9), 8, False, ((1, 7),)),
        (AttentionMask(causal=True, window=9, sinks=2), 8, True, ((1, 7),)),
    ],
)
def test_ring_hops_stop_early_for_windows(mask, shard_len, contiguous, want):
    assert ring.ring_hops(8, mask, shard_len, contiguous) == want


def _ppermutes_sent(jaxpr) -> int:
    """ppermute executions in a jaxpr, scan bodies counted `length` times."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "ppermute":
            total += 1
        times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    total += times * _ppermutes_sent(sub)
    return total


@pytest.mark.parametrize(
    "kwargs, want", [({}, 7), ({"window": 9}, 1), ({"window": 17}, 2), ({"causal": False, "window": 9}, 2)]
)
def test_ring_sends_only_blocks_inside_the_window(kwargs, want):
    """Shards of 8 contiguous keys: window 9 needs 1 hop, 17 needs 2, full causal 7."""
    q, k, v = _inputs(seq=64)
    jaxpr = jax.make_jaxpr(lambda q, k, v: ring.ring_attention(q, k, v, mesh=_mesh(8), **kwargs))(q, k, v)
    assert _ppermutes_sent(jaxpr.jaxpr) == 3 * want  # k, v and key positions per hop


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"axis_name": "tensor"}, "not a mesh axis"),
        ({"context_parallel": "tree"}, "context_parallel"),
        ({"block_size": 0}, "block_size"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    q, k, v = _inputs(seq=16)
    with pytest.raises(ValueError, match=match):
        ring.ring_attention(q, k, v, mesh=_mesh(8), **kwargs)


def test_indivisible_sequence_raises():
    q, k, v = _inputs(seq=12)
    with pytest.raises(ValueError, match="divisible"):
        ring.ring_attention(q, k, v, mesh=_mesh(8))
    with pytest.raises(ValueError, match="divisible by 2"):
        layout.zigzag_permutation(24, 8)


def test_heads_must_divide():
    q, k, v = _inputs(seq=16, heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="multiple"):
        ring.ring_attention(q, k, v, mesh=_mesh(8))


def test_no_mesh_raises():
    q, k, v = _inputs(seq=16)
    with pytest.raises(ValueError, match="needs a mesh"):
        ring.ring_attention(q, k, v)
