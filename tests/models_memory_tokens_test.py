"""Tests for the Recurrent Memory Transformer wrapper (memory tokens)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from longctx_jax.data import synthetic_passkey
from longctx_jax.models import memory_tokens as mt
from longctx_jax.models.config import ModelConfig
from longctx_jax.train.synthetic import train_synthetic

CFG = ModelConfig(vocab_size=24, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128)


def _model(**kwargs):
    kwargs = {"num_memory": 4, "segment_len": 8, **kwargs}
    return mt.MemoryTokenDecoder(CFG, rngs=nnx.Rngs(0), **kwargs)


def _tokens(batch=2, length=24, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, CFG.vocab_size, (batch, length)), jnp.int32)


def test_one_segment_is_the_decoder_on_memory_segment_memory():
    model = _model()
    tokens = _tokens(length=8)
    mem = model.initial_memory(2)
    logits = nnx.jit(lambda m, t: m(t))(model, tokens)
    chex.assert_shape(logits, (2, 8, CFG.vocab_size))

    # Reference: the plain decoder's blocks on the concatenated embeddings, built independently.
    @nnx.jit
    def reference(dec, mem, tokens):
        h = jnp.concatenate([mem, dec.embed_tokens(tokens), mem], axis=1)
        for block in dec.layers:
            h = block(h, None, None)
        return dec.logits(h)[:, 4:12]

    chex.assert_trees_all_close(logits, reference(model.decoder, mem, tokens), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("carry", [True, False])
def test_earlier_segments_reach_later_ones_only_through_memory(carry):
    model = _model(carry_memory=carry)
    call = nnx.jit(lambda m, t: m(t))
    a = _tokens(length=24)
    b = a.at[:, 3].set((a[:, 3] + 1) % CFG.vocab_size)  # change one token of segment 0
    la, lb = call(model, a), call(model, b)
    later = float(jnp.max(jnp.abs(la[:, 8:] - lb[:, 8:])))
    assert (later > 1e-5) == carry
    chex.assert_trees_all_close(la[:, :3], lb[:, :3], atol=1e-6)  # causal within the segment


@pytest.mark.parametrize("bptt", [None, 1, 2])
def test_gradients_flow_across_segments_up_to_the_truncation(bptt):
    model = _model(bptt_segments=bptt)
    tokens = _tokens(length=24)

    def last_segment_loss(mem):
        logits, _ = model.run_segments(mem, tokens)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits[:, 16:], tokens[:, 16:]))

    grad = jax.jit(jax.grad(last_segment_loss))(model.initial_memory(2))
    chex.assert_tree_all_finite(grad)
    reaches = float(jnp.max(jnp.abs(grad))) > 0.0
    assert reaches == (bptt is None or bptt > 2)  # 3 segments: the truncation at 1 or 2 cuts it


def test_bad_lengths_raise():
    with pytest.raises(ValueError, match="multiple of segment_len"):
        _model()(_tokens(length=10))
    with pytest.raises(ValueError, match="num_memory"):
        _model(num_memory=0)


@pytest.mark.slow
def test_memory_carries_a_passkey_across_segments():
    """Short CPU training: answer accuracy with memory beats the reset-memory ablation."""
    seg, length = 8, 16
    optim = {"learning_rate": 3e-3, "warmup_steps": 20, "weight_decay": 0.0}

    def batches(step):
        return synthetic_passkey.passkey_batch(
            np.random.default_rng(step), 32, length, num_keys=4, vocab_size=CFG.vocab_size, key_span=seg - 2
        )

    test = synthetic_passkey.passkey_batch(
        np.random.default_rng(10_000), 256, length, num_keys=4, vocab_size=CFG.vocab_size, key_span=seg - 2
    )
    acc = {}
    for carry in (True, False):
        model, losses = train_synthetic(
            _model(segment_len=seg, carry_memory=carry), batches, steps=150, optim_cfg=optim
        )
        logits = nnx.jit(lambda m, t: m(t))(model, jnp.asarray(test["inputs"]))
        acc[carry] = synthetic_passkey.exact_match(logits, test)
    assert acc[False] < 0.4  # chance is 1/4: nothing in the last segment names the key
    assert acc[True] > acc[False] + 0.3, acc
