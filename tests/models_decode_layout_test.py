"""Decode's `[out, in]` copies of the projection weights (`decoder.with_decode_layout`,
`Generator(decode_layout=...)`): the same products as the stored layout through both the
few-row handler and sgemm, the model left as it was, adapters still applied, and the "auto" rule."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.models import generate
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import DecodeLayout, Decoder, decode_layout_bytes, with_decode_layout
from longctx_jax.models.generate import Generator
from longctx_jax.models.lora import LoraSpec, add_lora

CFG = ModelConfig(vocab_size=97, d_model=48, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=80,
                  init_std=0.3, matmul_impl="cpu_blas")


def _tokens(batch: int, length: int) -> jax.Array:
    return jax.random.randint(jax.random.key(3), (batch, length), 0, CFG.vocab_size)


@pytest.mark.parametrize("shape", [(1, 3), (2, 40)])  # few-row handler, sgemm
def test_copies_give_the_same_logits_and_leave_the_model_alone(shape):
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    copy = with_decode_layout(model)
    assert not hasattr(model.layers[0].attn, "wqkv_t")
    attn, mlp = copy.layers[1].attn, copy.layers[1].mlp
    chex.assert_shape([attn.wqkv_t[...], attn.wo_t[...], mlp.w_gate_up_t[...], mlp.w_down_t[...]],
                      [((4 + 2 * 2) * 12, 48), (48, 4 * 12), (2 * 80, 48), (48, 80)])
    stored = model.layers[1]
    want = np.concatenate([np.asarray(stored.attn.wq[...]).reshape(48, -1).T,
                           np.asarray(stored.attn.wk[...]).reshape(48, -1).T,
                           np.asarray(stored.attn.wv[...]).reshape(48, -1).T])
    np.testing.assert_array_equal(np.asarray(attn.wqkv_t[...]), want)
    wo = np.asarray(stored.attn.wo[...])  # [N, H, D]
    np.testing.assert_array_equal(np.asarray(attn.wo_t[...]), wo.reshape(-1, 48).T)
    assert isinstance(attn.wqkv_t, DecodeLayout) and not isinstance(attn.wqkv_t, nnx.Param)
    assert decode_layout_bytes(model) == 2 * 4 * (2 * 48 * 48 + 2 * 48 * 24 + 3 * 48 * 80)
    tokens = _tokens(*shape)
    chex.assert_trees_all_close(jax.jit(lambda t: copy(t))(tokens), model(tokens), atol=1e-5, rtol=1e-5)


def test_copies_are_in_the_activation_dtype():
    model = Decoder(CFG.replace(param_dtype="bfloat16"), rngs=nnx.Rngs(0))  # float32 activations
    copy = with_decode_layout(model)
    assert copy.layers[0].attn.wqkv_t[...].dtype == jnp.float32  # a decode step casts nothing
    assert decode_layout_bytes(model) == 2 * 4 * (2 * 48 * 48 + 2 * 48 * 24 + 3 * 48 * 80)
    tokens = _tokens(1, 3)
    chex.assert_trees_all_close(copy(tokens), model(tokens), atol=1e-5, rtol=1e-5)


def test_copies_keep_adapters():
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    add_lora(model, LoraSpec(2, 4.0, ("attn", "mlp")), rngs=nnx.Rngs(1))
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Variable) and path[-1] == "lora_b":
            var.value = jax.random.normal(jax.random.key(len(path)), var.value.shape) * 0.3
    tokens = _tokens(1, 3)
    adapted = model(tokens)
    chex.assert_trees_all_close(with_decode_layout(model)(tokens), adapted, atol=1e-5, rtol=1e-5)
    bare = Decoder(CFG, rngs=nnx.Rngs(0))(tokens)
    assert float(jnp.max(jnp.abs(adapted - bare))) > 1e-3  # the adapters do change the logits


def test_generators_of_both_layouts_generate_the_same_tokens():
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    prompt = np.asarray(_tokens(1, 7))
    stored = Generator(model, cache_size=20, decode_layout="stored")
    transposed = Generator(model, cache_size=20, decode_layout="transposed")
    assert stored.decode_state is stored.state
    assert len(jax.tree.leaves(transposed.decode_state.filter(DecodeLayout))) == 2 * 4  # layers x products
    tokens = stored(prompt, 12)
    np.testing.assert_array_equal(transposed(prompt, 12), tokens)
    # Both keep the weights they were built with: changing the model reaches neither prefill
    # nor the decode copies (which would otherwise disagree).
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            var.value = var.value * 0.5
    np.testing.assert_array_equal(transposed(prompt, 12), tokens)
    np.testing.assert_array_equal(stored(prompt, 12), tokens)
    assert not np.array_equal(Generator(model, cache_size=20)(prompt, 12), tokens)


def test_auto_rule(monkeypatch):
    model = Decoder(CFG, rngs=nnx.Rngs(0))  # matmul_impl "cpu_blas": every product is ours
    assert Generator(model, cache_size=8).decode_layout == "transposed"
    assert Generator(model, cache_size=8, batch=64).decode_layout == "stored"  # sgemm rows
    xla = Decoder(CFG.replace(matmul_impl="xla"), rngs=nnx.Rngs(0))
    assert Generator(xla, cache_size=8).decode_layout == "stored"
    monkeypatch.setattr(generate, "DECODE_COPY_MAX_BYTES", decode_layout_bytes(model) - 1)
    assert Generator(model, cache_size=8).decode_layout == "stored"  # copies over the cap
    assert Generator(model, cache_size=8, decode_layout="transposed").decode_layout == "transposed"
    with pytest.raises(ValueError, match="unknown decode_layout 'fast'; valid: "):
        Generator(model, cache_size=8, decode_layout="fast")
