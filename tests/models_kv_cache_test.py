"""KV cache: cached decoding equals full recomputation; StreamingLLM re-indexing; memory calculator."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.attention.kernels import native
from longctx_jax.models import memory
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.kv_cache import EMPTY_POSITION, KVCache


def tiny_model(num_layers: int = 2, **kw) -> Decoder:
    """The oracle by name unless a test asks for another implementation."""
    cfg = ModelConfig(**(dict(vocab_size=61, d_model=32, num_layers=num_layers, num_heads=4, num_kv_heads=2,
                              mlp_dim=48, rope_theta=500.0, init_std=0.2, attention_impl="dense") | kw))
    return Decoder(cfg, rngs=nnx.Rngs(3))


def empty_cache(model: Decoder, capacity: int, **kw) -> KVCache:
    cfg = model.cfg
    return KVCache.create(num_layers=cfg.num_layers, batch=2, capacity=capacity,
                          num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, **kw)


@pytest.mark.parametrize("use_jit,kw", [
    (False, {}), (True, {}), (True, {"window": 5}), (True, {"qkv_bias": True, "tie_embeddings": False}),
])
def test_incremental_decode_matches_full_forward(use_jit, kw):
    model = tiny_model(**kw)
    tokens = jax.random.randint(jax.random.key(0), (2, 14), 0, 61)
    full = model(tokens)
    decode = nnx.jit(lambda m, t, c: m.decode(t, c)) if use_jit else (lambda m, t, c: m.decode(t, c))
    cache = empty_cache(model, capacity=16)
    logits, cache = decode(model, tokens[:, :6], cache)  # prefill
    steps = [logits]
    for t in range(6, 14):
        logits, cache = decode(model, tokens[:, t:t + 1], cache)
        steps.append(logits)
    chex.assert_trees_all_close(jnp.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-4)
    assert int(cache.length) == 14
    # GQA: only the KV heads are stored.
    chex.assert_shape(cache.k[0], (2, 16, 2, 8))


def streaming_reference(tokens: list[int], sinks: int, window: int) -> list[list[int]]:
    """Which tokens StreamingLLM keeps after each step, in cache order (sinks, then oldest first)."""
    kept_after = []
    for n in range(1, len(tokens) + 1):
        seen = list(range(n))
        kept_after.append(seen if n <= sinks + window else seen[:sinks] + seen[n - window:])
    return kept_after


@pytest.mark.parametrize("sinks,capacity", [(4, 10), (0, 6), (2, 3)])
def test_streaming_plan_reindexes_positions(sinks, capacity):
    cache = KVCache.create(num_layers=1, batch=1, capacity=capacity, num_kv_heads=1, head_dim=2,
                           streaming=True, sinks=sinks)
    window = capacity - sinks
    kept = streaming_reference(list(range(40)), sinks, window)
    slot_of = {}
    plan_step = jax.jit(lambda c: c.plan(1))
    for n in range(40):
        plan = plan_step(cache)
        slot_of[n] = int(plan.write_index)
        # The new query sits at the cache length; each kept token's slot holds its rank.
        assert int(plan.q_positions_BT[0, 0]) == len(kept[n]) - 1
        k_pos = np.asarray(plan.k_positions_BC[0])
        for rank, t in enumerate(kept[n]):
            assert k_pos[slot_of[t]] == rank, (n, t)
        assert np.sum(k_pos != EMPTY_POSITION) == len(kept[n])
        cache = cache.advance(cache.k, cache.v, 1)


def test_streaming_one_layer_equals_recompute_on_kept_tokens():
    """With one layer, cached pre-RoPE keys/values depend only on their token, so StreamingLLM's
    next-token logits equal a full forward over the kept tokens at positions 0..len-1."""
    model = tiny_model(num_layers=1)
    sinks, capacity = 2, 7
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 25), 0, 61))
    cache = empty_cache(model, capacity, streaming=True, sinks=sinks)
    decode = nnx.jit(lambda m, t, c: m.decode(t, c))
    logits, cache = decode(model, jnp.asarray(tokens[:, :5]), cache)
    chex.assert_trees_all_close(logits, model(jnp.asarray(tokens[:, :5])), rtol=1e-4, atol=1e-4)
    kept = streaming_reference(list(range(25)), sinks, capacity - sinks)
    forward = nnx.jit(lambda m, t: m(t)[:, -1:])
    for n in range(5, 25):
        logits, cache = decode(model, jnp.asarray(tokens[:, n:n + 1]), cache)
        ref = forward(model, jnp.asarray(tokens[:, kept[n]]))
        chex.assert_trees_all_close(logits, ref, rtol=1e-4, atol=1e-4)
    chex.assert_shape(cache.k[0], (2, capacity, 2, 8))
    assert int(cache.length) == 25


def test_check_room_errors():
    plain = KVCache.create(num_layers=1, batch=1, capacity=8, num_kv_heads=1, head_dim=2)
    plain.check_room(0, 8)
    with pytest.raises(ValueError, match="do not fit"):
        plain.check_room(0, 9)
    with pytest.raises(ValueError, match="do not fit"):
        plain.check_room(8, 1)
    stream = KVCache.create(num_layers=1, batch=1, capacity=8, num_kv_heads=1, head_dim=2, streaming=True)
    stream.check_room(100, 1)
    with pytest.raises(ValueError, match="single tokens"):
        stream.check_room(6, 3)
    with pytest.raises(ValueError, match="sinks"):
        KVCache.create(num_layers=1, batch=1, capacity=4, num_kv_heads=1, head_dim=2, streaming=True, sinks=4)


@pytest.mark.parametrize("name,length,dtype,expected", [
    ("Llama-2-7B", 4096, "float16", 2 * 2**30),       # 32 layers x 32 KV heads x 128
    ("Llama-3-8B", 8192, "bfloat16", 1 * 2**30),      # GQA: 8 KV heads
    ("Llama-3-70B", 131072, "bfloat16", 40 * 2**30),  # 80 layers at 128K
    ("SmolLM2-135M", 8192, "float32", 360 * 2**20),   # 30 layers x 3 KV heads x 64
])
def test_memory_known_shapes(name, length, dtype, expected):
    shape = memory.KNOWN_SHAPES[name]
    assert memory.kv_cache_bytes(shape, length=length, dtype=dtype) == expected
    assert memory.max_cache_length(shape, expected, dtype=dtype) == length
    assert memory.max_cache_length(shape, expected - 1, dtype=dtype) == length - 1
    assert memory.kv_cache_bytes(shape, length=length, batch=3, dtype=dtype) == 3 * expected


def test_memory_matches_allocated_cache():
    model = tiny_model()
    cache = empty_cache(model, capacity=16)
    allocated = sum(x.nbytes for x in cache.k + cache.v)
    shape = memory.CacheShape(model.cfg.num_layers, model.cfg.num_kv_heads, model.cfg.head_dim)
    assert memory.kv_cache_bytes(shape, length=16, batch=2, dtype="float32") == allocated
    with pytest.raises(ValueError, match="unknown cache dtype"):
        memory.kv_cache_bytes(shape, length=1, dtype="float64")


@pytest.mark.parametrize("kw,cache_kw", [
    ({}, {}), ({"window": 5}, {}), ({}, {"streaming": True, "sinks": 2}),
    ({}, {"dtype": "bfloat16"}), ({"attention_impl": "blockwise"}, {}), ({"attention_impl": "auto"}, {}),
])
def test_prefill_equals_decode_into_an_empty_cache(kw, cache_kw):
    model = tiny_model(**kw)
    tokens = jax.random.randint(jax.random.key(4), (2, 11), 0, 61)
    cache = empty_cache(model, capacity=16, **cache_kw)
    ref_logits, ref_cache = nnx.jit(lambda m, t, c: m.decode(t, c))(model, tokens, cache)
    logits, filled = nnx.jit(lambda m, t, c: m.prefill(t, c))(model, tokens, cache)
    chex.assert_trees_all_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(filled.k, ref_cache.k, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(filled.v, ref_cache.v, rtol=1e-5, atol=1e-5)
    assert int(filled.length) == 11 and filled.streaming == ref_cache.streaming
    # A stale cache gives the same result: prefill ignores what it held.
    _, stale = nnx.jit(lambda m, t, c: m.decode(t, c))(model, tokens[:, :3], cache)
    again, _ = nnx.jit(lambda m, t, c: m.prefill(t, c))(model, tokens, stale)
    chex.assert_trees_all_close(again, logits)
    # Decoding continues from the prefilled cache as from the decoded one.
    nxt = tokens[:, :1]
    chex.assert_trees_all_close(model.decode(nxt, filled)[0], model.decode(nxt, ref_cache)[0],
                                rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw,cache_kw", [
    ({}, {}), ({"window": 5}, {}), ({}, {"streaming": True, "sinks": 2}),
    ({"attention_impl": "blockwise"}, {"dtype": "bfloat16"}), ({"position": "alibi"}, {}),
    pytest.param({"attention_impl": "cpu_flash", "d_model": 64}, {},
                 marks=pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")),
])
@pytest.mark.parametrize("method", ["prefill", "decode"])
def test_last_only_equals_the_last_row_of_all_logits(kw, cache_kw, method):
    # last_only runs the last layer's attention and SwiGLU for the last token alone.
    model = tiny_model(**kw)
    tokens = jax.random.randint(jax.random.key(6), (2, 11), 0, 61)
    cache = empty_cache(model, capacity=16, **cache_kw)
    if method == "decode" and kw.get("attention_impl") == "cpu_flash":
        pytest.skip("cpu_flash takes default positions only; the cached decode path passes positions")
    run = nnx.jit(lambda m, t, c, last: getattr(m, method)(t, c, last_only=last), static_argnums=3)
    all_logits, full_cache = run(model, tokens, cache, False)
    last_logits, last_cache = run(model, tokens, cache, True)
    chex.assert_shape(last_logits, (2, 1, 61))
    chex.assert_trees_all_close(last_logits, all_logits[:, -1:], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close((last_cache.k, last_cache.v), (full_cache.k, full_cache.v))


@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")
@pytest.mark.parametrize("kw", [{}, {"window": 5}])
def test_cpu_flash_prefill_equals_dense_decode(kw):
    # cpu_flash takes only default positions, so the reference decodes with a dense twin.
    flash = tiny_model(d_model=64, attention_impl="cpu_flash", **kw)
    ref = tiny_model(d_model=64, **kw)
    tokens = jax.random.randint(jax.random.key(5), (2, 11), 0, 61)
    cache = empty_cache(ref, capacity=16)
    ref_logits, ref_cache = nnx.jit(lambda m, t, c: m.decode(t, c))(ref, tokens, cache)
    logits, filled = nnx.jit(lambda m, t, c: m.prefill(t, c))(flash, tokens, cache)
    chex.assert_trees_all_close((logits, filled.k, filled.v), (ref_logits, ref_cache.k, ref_cache.v),
                                rtol=1e-5, atol=1e-5)


def test_prefill_longer_than_the_cache_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="prefill needs 1 to 8 tokens"):
        model.prefill(jnp.zeros((2, 9), jnp.int32), empty_cache(model, capacity=8))
