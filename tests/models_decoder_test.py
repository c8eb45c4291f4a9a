"""Decoder: shapes, causality, GQA == MHA with repeated KV heads, position schemes, config errors,
the `hidden` seams (rotary, attention_fn, num_layers) and remat."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.attention import dense
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.positional.rope import apply_rope, rope_frequencies

BASE = dict(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64)


def _tokens(batch=2, length=12, seed=0):
    return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, BASE["vocab_size"])


@pytest.mark.parametrize("position", ["rope", "alibi", "none"])
@pytest.mark.parametrize("tie", [True, False])
def test_logits_shape_and_dtype(position, tie):
    model = Decoder(ModelConfig(**BASE, position=position, tie_embeddings=tie), rngs=nnx.Rngs(0))
    logits = model(_tokens())
    chex.assert_shape(logits, (2, 12, BASE["vocab_size"]))
    assert logits.dtype == jnp.float32
    chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("position", ["rope", "alibi", "none"])
@pytest.mark.parametrize("use_jit", [False, True])
def test_output_at_i_does_not_depend_on_later_tokens(position, use_jit):
    model = Decoder(ModelConfig(**BASE, position=position), rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)

    def forward(params, tokens):
        return nnx.merge(graphdef, params)(tokens)

    forward = jax.jit(forward) if use_jit else forward
    tokens = _tokens(length=16)
    cut = 9
    perturbed = tokens.at[:, cut:].set((tokens[:, cut:] + 7) % BASE["vocab_size"])
    before, after = forward(params, tokens), forward(params, perturbed)
    chex.assert_trees_all_close(before[:, :cut], after[:, :cut], atol=1e-5, rtol=1e-5)
    assert np.abs(np.asarray(before[:, cut:] - after[:, cut:])).max() > 1e-3


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = Decoder(ModelConfig(**BASE), rngs=nnx.Rngs(2))
    mha = Decoder(ModelConfig(**{**BASE, "num_kv_heads": BASE["num_heads"]}), rngs=nnx.Rngs(3))
    _, gqa_params = nnx.split(gqa)
    graphdef, _ = nnx.split(mha)
    group = BASE["num_heads"] // BASE["num_kv_heads"]
    mha_params = jax.tree.map(lambda x: x, gqa_params)
    for layer in range(BASE["num_layers"]):
        attn = mha_params["layers"][layer]["attn"]
        for name in ("wk", "wv"):
            attn[name] = nnx.Param(jnp.repeat(attn[name][...], group, axis=1))
    tokens = _tokens()
    chex.assert_trees_all_close(gqa(tokens), nnx.merge(graphdef, mha_params)(tokens), atol=1e-5, rtol=1e-5)


def test_packed_documents_are_independent():
    model = Decoder(ModelConfig(**BASE), rngs=nnx.Rngs(4))
    doc_a, doc_b = _tokens(1, 5, seed=5), _tokens(1, 7, seed=6)
    packed = jnp.concatenate([doc_a, doc_b], axis=1)
    positions = jnp.concatenate([jnp.arange(5), jnp.arange(7)])[None]
    segments = jnp.array([[1] * 5 + [2] * 7])
    packed_logits = model(packed, positions, segments)
    chex.assert_trees_all_close(packed_logits[:, :5], model(doc_a), atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(packed_logits[:, 5:], model(doc_b), atol=1e-5, rtol=1e-5)


def test_rope_logits_are_shift_invariant_and_alibi_too():
    for position in ("rope", "alibi"):
        model = Decoder(ModelConfig(**BASE, position=position), rngs=nnx.Rngs(7))
        tokens = _tokens(1, 10)
        shifted = model(tokens, jnp.arange(10)[None] + 1000)
        chex.assert_trees_all_close(model(tokens), shifted, atol=2e-4, rtol=2e-4)


def test_bfloat16_compute_is_close_to_float32():
    f32 = Decoder(ModelConfig(**BASE), rngs=nnx.Rngs(8))
    graphdef, params = nnx.split(f32)
    bf16 = nnx.merge(nnx.split(Decoder(ModelConfig(**BASE, dtype="bfloat16"), rngs=nnx.Rngs(8)))[0], params)
    tokens = _tokens()
    probs32 = jax.nn.softmax(f32(tokens))
    probs16 = jax.nn.softmax(bf16(tokens))
    assert float(jnp.abs(probs32 - probs16).max()) < 2e-2


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_kv_heads=3), "multiple of model.num_kv_heads"),
        (dict(position="sinusoidal"), "unknown model.position"),
        (dict(d_model=30), "divisible by num_heads"),
        (dict(position="alibi", rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling is set"),
        (dict(dtype="float8"), "unknown model.dtype"),
        (dict(num_layers=0), "num_layers must be positive"),
    ],
)
def test_bad_configs_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**BASE, **changes})


def test_from_config_rejects_unknown_fields_and_maps_attention_block():
    cfg = ModelConfig.from_config({**BASE, "attention": {"impl": "dense", "window": 4, "sinks": 1}})
    assert (cfg.attention_impl, cfg.window, cfg.sinks) == ("dense", 4, 1)
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_config({**BASE, "num_experts": 8})


def test_sliding_window_config_limits_receptive_field():
    model = Decoder(ModelConfig(**{**BASE, "num_layers": 1}, window=3), rngs=nnx.Rngs(9))
    tokens = _tokens(1, 12)
    perturbed = tokens.at[:, 2].set((tokens[:, 2] + 1) % BASE["vocab_size"])
    diff = np.abs(np.asarray(model(tokens) - model(perturbed))).max(axis=-1)[0]
    # One layer, window 3: token 2 is seen by positions 2, 3, 4 only.
    assert (diff[[2, 3, 4]] > 1e-4).all() and (diff[5:] < 1e-6).all() and (diff[:2] < 1e-6).all()


def test_hidden_with_written_out_rotary_and_attention_is_the_decoder():
    """`Decoder.hidden`'s seams: defaults written out by hand, an identity rotary, num_layers."""
    cfg = ModelConfig(**BASE)
    model = Decoder(cfg, rngs=nnx.Rngs(4))
    tokens = _tokens()
    h = model.embed_tokens(tokens)
    inv_freq, factor = rope_frequencies(cfg.head_dim, cfg.rope_theta, None)

    def rotary(x_BTNH, positions_BT):
        return apply_rope(x_BTNH, positions_BT, inv_freq, factor)

    def attention_fn(q, k, v):
        return dense.attention(q, k, v, causal=True)

    got = model.logits(model.hidden(h, rotary=rotary, attention_fn=attention_fn))
    chex.assert_trees_all_close(got, model(tokens), atol=1e-5, rtol=1e-5)
    # No rotation at all is the NoPE model with the same parameters.
    nope = nnx.merge(nnx.split(Decoder(cfg.replace(position="none"), rngs=nnx.Rngs(0)))[0], nnx.state(model))
    got = model.logits(model.hidden(h, rotary=lambda x_BTNH, positions_BT: x_BTNH))
    chex.assert_trees_all_close(got, nope(tokens), atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(model.hidden(h, num_layers=0), h)


def test_remat_changes_neither_loss_nor_gradient_even_inside_lax_map():
    """The model is closed over by lax.map (as LongRoPE's population_nll does), where remat must work."""
    tokens = _tokens(batch=3)

    def loss(params, graphdef):
        model = nnx.merge(graphdef, params)
        return jnp.mean(jax.lax.map(lambda t_T: jnp.mean(jnp.square(model(t_T[None]))), tokens))

    results = []
    for remat in (False, True):
        graphdef, params = nnx.split(Decoder(ModelConfig(**BASE, remat=remat), rngs=nnx.Rngs(5)))
        results.append(jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, graphdef))
    chex.assert_trees_all_close(results[0], results[1], atol=1e-5, rtol=1e-5)
