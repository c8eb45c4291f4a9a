"""Attention patterns selected by config (`config.model.attention.pattern`) inside the decoder."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.attention import dense
from longctx_jax.attention.patterns import BigBird, Longformer, dilated_attention
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.kv_cache import KVCache

BASE = dict(vocab_size=37, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48, init_std=0.2)
T = 24
PATTERNS = {
    "longformer": {"window": 4, "global_positions": [0, 9]},
    "bigbird": {"seq_len": T, "block": 4, "num_window_blocks": 1, "num_global_blocks": 1,
                "num_random_blocks": 1, "seed": 3, "per_head": True},
    "dilated": {"segment_lengths": [8, 24], "dilation_rates": [1, 2]},
}


def _model(pattern: str, impl: str = "dense", **kw) -> Decoder:
    cfg = ModelConfig(**BASE, attention_impl=impl, attention_pattern=pattern,
                      attention_options=PATTERNS.get(pattern), **kw)
    return Decoder(cfg, rngs=nnx.Rngs(0))


def _reference_attention(pattern: str):
    """The same pattern written directly against the oracle, not through the config."""
    positions = jnp.arange(T)[None]
    if pattern == "longformer":
        mask = Longformer(window=4, global_positions=(0, 9))(positions, positions)
        return lambda q, k, v: dense.attention(q, k, v, causal=True, mask=mask)
    if pattern == "bigbird":
        mask = BigBird(seq_len=T, block=4, num_window_blocks=1, num_global_blocks=1, num_random_blocks=1,
                       seed=3, num_heads=4)(positions, positions)
        return lambda q, k, v: dense.attention(q, k, v, causal=True, mask=mask)
    return lambda q, k, v: dilated_attention(q, k, v, segment_lengths=(8, 24), dilation_rates=(1, 2))


def _tokens(seed=0):
    return jax.random.randint(jax.random.key(seed), (2, T), 0, BASE["vocab_size"])


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_config_pattern_equals_the_pattern_written_against_the_oracle(pattern):
    model = _model(pattern)
    tokens = _tokens()
    ours = nnx.jit(lambda m, t: m(t))(model, tokens)
    hidden = model.hidden(model.embed_tokens(tokens), attention_fn=_reference_attention(pattern))
    reference = model.logits(hidden)
    chex.assert_trees_all_close(ours, reference, atol=1e-5, rtol=1e-5)
    # The memory-efficient implementation gives the same numbers.
    blockwise = nnx.merge(nnx.graphdef(_model(pattern, "blockwise")), nnx.state(model))
    chex.assert_trees_all_close(nnx.jit(lambda m, t: m(t))(blockwise, tokens), ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_patterns_are_causal_and_trainable(pattern):
    model = _model(pattern, "blockwise")
    tokens = _tokens(1)
    changed = tokens.at[:, 15:].set((tokens[:, 15:] + 1) % BASE["vocab_size"])
    graphdef, params = nnx.split(model, nnx.Param)
    forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
    chex.assert_trees_all_close(forward(params, tokens)[:, :15], forward(params, changed)[:, :15], atol=1e-6)

    def loss(p):
        logits = forward(p, tokens)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1))

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    chex.assert_tree_all_finite(grads)
    # One plain gradient step lowers the loss: the pattern trains.
    stepped = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    assert float(jax.jit(loss)(stepped)) < float(value)


def test_mask_patterns_run_against_a_kv_cache():
    model = _model("longformer")
    tokens = _tokens(2)
    cache = KVCache.create(num_layers=2, batch=2, capacity=T, num_kv_heads=2, head_dim=8)
    logits, _ = model.decode(tokens, cache)
    chex.assert_trees_all_close(logits, model(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("changes,match", [
    (dict(attention_pattern="landmark"), "LandmarkDecoder"),
    (dict(attention_pattern="longformer"), "needs options"),
    (dict(attention_pattern="longformer", attention_options={"window": 3, "globals": [0]}),
     "unknown options"),
    (dict(attention_pattern="dilated", attention_options={"segment_lengths": [4], "dilation_rates": [1, 2]}),
     "equally many"),
    (dict(attention_pattern="dilated", attention_options=PATTERNS["dilated"], window=4), "takes no window"),
    (dict(attention_impl="flashy"), "unknown model.attention.impl"),
    (dict(window=0), "window"),
])
def test_bad_attention_configs_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**BASE, **changes)


def test_dilated_has_no_cache_form_and_no_segments():
    model = _model("dilated")
    cache = KVCache.create(num_layers=2, batch=2, capacity=T, num_kv_heads=2, head_dim=8)
    with pytest.raises(ValueError, match="KV-cache"):
        model.decode(_tokens(), cache)
    with pytest.raises(ValueError, match="segment_ids"):
        model(_tokens(), segment_ids_BT=np.zeros((2, T), np.int32))


def test_config_dict_form():
    cfg = ModelConfig.from_config({**BASE, "attention": {"impl": "blockwise", "pattern": "longformer",
                                                         "pattern_options": {"window": 4}}})
    assert (cfg.attention_impl, cfg.attention_pattern) == ("blockwise", "longformer")
    assert cfg.pattern.mask.window == 4
    assert ModelConfig(**BASE).attention_impl == "auto"
    assert cfg.replace(num_layers=1).pattern.mask == cfg.pattern.mask


def test_a_bad_rope_scaling_is_refused_when_the_config_is_built():
    with pytest.raises(ValueError, match="factor"):
        ModelConfig(**BASE, rope_scaling={"rope_type": "linear", "factor": 0.5})
    with pytest.raises(ValueError, match="rope_type"):
        ModelConfig(**BASE, rope_scaling={"rope_type": "yarnn", "factor": 2.0})
