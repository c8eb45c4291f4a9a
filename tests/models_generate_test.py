"""Generation: cached greedy equals recomputation, one compile per step, StreamingLLM past the
cache size in constant memory, temperature / top-p sampling, bad arguments refused."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.generate import Generator, generate, sample_token
from tests.models_llama_test import real_tokens, smollm2


def greedy_by_recomputation(model, prompt: list[int], new: int) -> list[int]:
    """Token-by-token greedy decoding with a full forward each step (no cache).

    The sequence is padded to a fixed length so one compiled forward serves every step;
    causal attention makes logits at position t independent of the padding after it."""
    total = len(prompt) + new
    forward = nnx.jit(lambda m, t: m(t))
    seq = list(prompt)
    for _ in range(new):
        buf = np.zeros((1, total), np.int32)
        buf[0, :len(seq)] = seq
        seq.append(int(jnp.argmax(forward(model, jnp.asarray(buf))[0, len(seq) - 1])))
    return seq


def test_cached_greedy_equals_recomputation_and_compiles_once():
    model, _ = smollm2()
    prompt = real_tokens(24)
    expected = greedy_by_recomputation(model, prompt, 12)
    gen = Generator(model, cache_size=40)
    out = gen(np.asarray([prompt]), 12)
    chex.assert_shape(out, (1, 36))
    assert out[0].tolist() == expected
    assert gen.decode_step._cache_size() == 1 and gen.prefill._cache_size() == 1
    # A second call reuses both compiled steps.
    assert gen(np.asarray([prompt]), 5)[0].tolist() == expected[:29]
    assert gen.decode_step._cache_size() == 1


def test_streaming_tiny_model_runs_past_the_cache_in_constant_memory():
    cfg = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48,
                      init_std=0.3)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    prompt = np.arange(1, 7, dtype=np.int32)[None]
    gen = Generator(model, cache_size=10, streaming=True, sinks=2, temperature=1.0, top_p=0.9)
    caches = []
    step = gen.decode_step
    gen.decode_step = lambda *a: caches.append(a[2].k[0].shape) or step(*a)
    out = gen(prompt, 50, seed=3)
    chex.assert_shape(out, (1, 56))
    assert set(caches) == {(1, 10, 2, 8)} and len(caches) == 49 and step._cache_size() == 1
    plain = Generator(model, cache_size=10, temperature=1.0, top_p=0.9)(prompt, 5, seed=3)
    assert out[0, :11].tolist() == plain[0].tolist()  # no eviction yet: same as plain decoding


@pytest.mark.slow
def test_streaming_runs_past_the_cache_in_constant_memory():
    model, tok = smollm2()
    prompt = real_tokens(12)
    plain = generate(model, prompt, max_new_tokens=21, cache_size=32)
    gen = Generator(model, cache_size=32, streaming=True, sinks=4)
    shapes = []
    out = gen(np.asarray([prompt]), 70, on_token=lambda t: shapes.append(t.shape))
    chex.assert_shape(out, (1, 82))
    assert len(shapes) == 70 and gen.decode_step._cache_size() == 1
    # Until the cache is full nothing is evicted, so streaming equals plain decoding.
    assert out[0, :33].tolist() == plain.tolist()
    assert np.all((out >= 0) & (out < tok.vocab_size))
    cache = gen.make_cache()
    chex.assert_shape(cache.k[0], (1, 32, 3, 64))


def test_prompt_longer_than_cache_is_refused():
    model, _ = smollm2()
    with pytest.raises(ValueError, match="longer than the cache"):
        generate(model, list(range(10)), max_new_tokens=2, cache_size=8)
    with pytest.raises(ValueError, match="do not fit"):
        generate(model, list(range(6)), max_new_tokens=5, cache_size=8)
    with pytest.raises(ValueError, match="temperature"):
        Generator(model, cache_size=8, temperature=-1.0)


@pytest.mark.parametrize("use_jit", [False, True])
def test_sampling_temperature_and_top_p(use_jit):
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 4000)

    def draw(temperature, top_p):
        fn = jax.vmap(lambda k: sample_token(logits, k, temperature, top_p)[0])
        fn = jax.jit(fn) if use_jit else fn
        return np.bincount(np.asarray(fn(keys)), minlength=4) / len(keys)

    np.testing.assert_array_equal(sample_token(logits, keys[0], 0.0, 1.0), [0])
    np.testing.assert_allclose(draw(1.0, 1.0), [0.5, 0.3, 0.15, 0.05], atol=0.03)
    # Nucleus 0.7: {0.5, 0.3} reaches it; renormalised to 0.625 / 0.375.
    np.testing.assert_allclose(draw(1.0, 0.7), [0.625, 0.375, 0, 0], atol=0.03)
    np.testing.assert_array_equal(draw(1.0, 0.01), [1, 0, 0, 0])
    # Low temperature sharpens towards the argmax.
    assert draw(0.1, 1.0)[0] > 0.99


def test_negative_max_new_tokens_is_refused_before_work():
    cfg = ModelConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=32)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0, got -1"):
        generate(model, [1, 2, 3], max_new_tokens=-1)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0, got -3"):
        Generator(model, cache_size=8)(np.asarray([[1, 2, 3]]), -3)
    assert generate(model, [1, 2, 3], max_new_tokens=0).tolist() == [1, 2, 3]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "experiments.generate", "--config", "configs/smollm2.py",
                             "--config.max_new_tokens=-1", "--config.checkpoint=/nonexistent.gguf"],
                            cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "max_new_tokens must be an integer >= 0, got -1" in result.stderr
    assert "nonexistent" not in result.stderr  # refused before anything was loaded
