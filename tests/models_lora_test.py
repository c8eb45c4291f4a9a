"""LoRA adapters (nnx.LoRA on flattened projections) and merging; remat policies; S2-Attn."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.attention.patterns.shifted_sparse import shifted_sparse_attention
from longctx_jax.attention.spec import AttentionSpec
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.lora import LoraSpec, add_lora, merge_lora, rebuild

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48,
                  attention_impl="dense")


def _randomize_adapters(model, seed=1):
    for i, (_, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))):
        var.set_value(jax.random.normal(jax.random.key(seed + i), var.shape) * 0.2)


def _tokens():
    return jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 16)))


@pytest.mark.parametrize("targets", [("wk", "wo"), ("attn", "mlp")])
def test_adapters_start_at_zero_and_merge_to_the_same_logits(targets):
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    before = model(_tokens())
    add_lora(model, LoraSpec(4, 8.0, targets), rngs=nnx.Rngs(1))
    chex.assert_trees_all_equal(model(_tokens()), before)  # B = 0 at init
    _randomize_adapters(model)
    adapted = model(_tokens())
    assert float(jnp.max(jnp.abs(adapted - before))) > 1e-3
    merged = merge_lora(model)
    assert not hasattr(merged.layers[0].attn, "wq_lora")
    chex.assert_trees_all_close(merged(_tokens()), adapted, atol=1e-5, rtol=1e-5)


def test_merged_weight_is_w_plus_scaled_a_b():
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    w = np.asarray(model.layers[1].attn.wo[...])  # [N, H, D]
    add_lora(model, LoraSpec(2, 6.0, ("wo",)), rngs=nnx.Rngs(1))
    _randomize_adapters(model)
    lora = model.layers[1].attn.wo_lora.lora
    a, b = np.asarray(lora.lora_a[...]), np.asarray(lora.lora_b[...])  # [N*H, 2], [2, D]
    want = w + (6.0 / 2) * np.einsum("ir,rd->id", a, b).reshape(w.shape)
    chex.assert_trees_all_close(np.asarray(merge_lora(model).layers[1].attn.wo[...]), want, atol=1e-5)


def test_rebuild_keeps_adapters_and_changes_the_config():
    model = add_lora(Decoder(CFG, rngs=nnx.Rngs(0)), LoraSpec(2, 2.0, ("mlp",)), rngs=nnx.Rngs(1))
    _randomize_adapters(model)
    other = rebuild(model, rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert other.cfg.rope_scaling_dict["factor"] == 2.0 and other.lora_spec == model.lora_spec
    chex.assert_trees_all_equal(nnx.state(other, nnx.LoRAParam), nnx.state(model, nnx.LoRAParam))


@pytest.mark.parametrize("policy", ["nothing_saveable", "dots_with_no_batch_dims_saveable"])
def test_remat_policies_give_the_same_gradients(policy):
    plain = Decoder(CFG, rngs=nnx.Rngs(0))
    remat = Decoder(CFG.replace(remat=True, remat_policy=policy), rngs=nnx.Rngs(0))

    def grads(model):
        return nnx.grad(lambda m: jnp.mean(m(_tokens()) ** 2))(model)

    chex.assert_trees_all_close(grads(remat), grads(plain), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="remat_policy 'bogus'"):
        CFG.replace(remat_policy="bogus")


def _s2_reference(q, k, v, doc, group):
    """Dense S2-Attn written out: per-head masks with loops, softmax in numpy."""
    B, T, N, H = q.shape
    K = k.shape[2]
    out = np.zeros_like(q)
    for n in range(N):
        shift = group // 2 if n >= N - N // 2 else 0
        kv = n // (N // K)
        for b in range(B):
            allowed = np.zeros((T, T), bool)
            for i in range(T):
                for j in range(i + 1):
                    allowed[i, j] = doc[b, i] == doc[b, j] and (i + shift) // group == (j + shift) // group
            logits = q[b, :, n] @ k[b, :, kv].T / np.sqrt(H)
            logits = np.where(allowed, logits, -np.inf)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            out[b, :, n] = (p / p.sum(-1, keepdims=True)) @ v[b, :, kv]
    return out


@pytest.mark.parametrize("N, K, impl", [(4, 2, "dense"), (3, 1, "dense"), (6, 3, "blockwise")])
def test_s2_attention_matches_the_dense_oracle(N, K, impl):
    rng = np.random.default_rng(0)
    B, T, H, G = 2, 24, 8, 8
    q = rng.normal(size=(B, T, N, H)).astype(np.float32)
    k, v = (rng.normal(size=(B, T, K, H)).astype(np.float32) for _ in range(2))
    doc = np.stack([np.zeros(T, np.int32), np.repeat([0, 1, 2], [5, 11, 8]).astype(np.int32)])
    got = jax.jit(lambda q, k, v: shifted_sparse_attention(
        q, k, v, AttentionSpec(causal=True, segment_ids=jnp.asarray(doc)), impl, group_size=G))(q, k, v)
    chex.assert_trees_all_close(np.asarray(got), _s2_reference(q, k, v, doc, G), atol=1e-5, rtol=1e-5)


def test_s2_is_refused_at_generation_and_evaluation_and_for_bad_lengths():
    from longctx_jax.eval.scoring import EvalModel
    from longctx_jax.models.kv_cache import KVCache

    s2 = CFG.replace(attention_pattern="s2", attention_options={"group_size": 8})
    model = Decoder(s2, rngs=nnx.Rngs(0))
    assert model(_tokens()).shape == (2, 16, 64)  # training-time forward runs
    with pytest.raises(ValueError, match="'s2' is for training only"):
        EvalModel(model)
    cache = KVCache.create(num_layers=2, batch=1, capacity=16, num_kv_heads=2, head_dim=8)
    with pytest.raises(ValueError, match="no KV-cache form"):
        model.prefill(_tokens()[:1], cache)
    with pytest.raises(ValueError, match="group_size 8 must divide the sequence length 12"):
        model(_tokens()[:, :12])
    with pytest.raises(ValueError, match="even integer"):
        CFG.replace(attention_pattern="s2", attention_options={"group_size": 5})


def test_bfloat16_compute_keeps_float32_master_weights_and_gradients():
    model = add_lora(Decoder(CFG.replace(dtype="bfloat16"), rngs=nnx.Rngs(0)), LoraSpec(2, 4.0, ("attn",)),
                     rngs=nnx.Rngs(1))
    _randomize_adapters(model)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model))} == {jnp.dtype(jnp.float32)}
    x = model.embed_tokens(_tokens())
    assert x.dtype == jnp.bfloat16
    assert model.layers[0].attn.wq_lora(x.reshape(2, 16, -1)).dtype == jnp.bfloat16
    grads = nnx.grad(lambda m: jnp.mean(m(_tokens()) ** 2), argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(g.dtype == jnp.float32 for g in leaves)
    chex.assert_tree_all_finite(grads)
