"""Tests for the landmark-attention decoder: grouped softmax vs brute force, retrieval, data layout."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.attention.dense import attention
from longctx_jax.data import synthetic_passkey
from longctx_jax.models import landmark as lmk
from longctx_jax.models.config import ModelConfig

BS = 3
CFG = ModelConfig(
    vocab_size=16, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=64, init_std=0.3
)


def _grouped_softmax_reference(q, k, v, block_size):
    """Brute force, one query at a time, straight from the paper's definition (numpy float64)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, L, N, H = q.shape
    G = N // k.shape[2]
    out = np.zeros_like(q)
    blk = np.arange(L) // (block_size + 1)
    is_lm = np.arange(L) % (block_size + 1) == block_size
    for b in range(B):
        for n in range(N):
            for i in range(L):
                s = k[b, :, n // G] @ q[b, i, n] / np.sqrt(H)
                direct = [j for j in range(i + 1) if blk[j] == blk[i] or (blk[j] < blk[i] and is_lm[j])]
                p = np.exp(s[direct] - s[direct].max())
                p /= p.sum()
                acc = np.zeros(H)
                for pj, j in zip(p, direct, strict=True):
                    if blk[j] == blk[i]:
                        acc += pj * v[b, j, n // G]
                    else:  # landmark j gates a softmax over its block's regular tokens
                        members = [m for m in range(L) if blk[m] == blk[j] and not is_lm[m]]
                        w = np.exp(s[members] - s[members].max())
                        acc += pj * (w / w.sum()) @ v[b, members, n // G]
                out[b, i, n] = acc
    return out


def _model(position="rope", **kwargs):
    return lmk.LandmarkDecoder(CFG.replace(position=position), block_size=BS, rngs=nnx.Rngs(0), **kwargs)


def _reference_forward(model, tokens, attend):
    """The decoder block written out with numpy attention."""
    dec = model.decoder
    blk = dec.layers[0]
    L = tokens.shape[1]
    pos = jnp.arange(L)[None]
    h = dec.embed_tokens(tokens)
    q, k, v = blk.attn.project_qkv(blk.attn_norm(h))
    q, k = blk.attn.rotate(q, pos, L), blk.attn.rotate(k, pos, L)
    h = h + blk.attn.output(jnp.asarray(attend(q, k, v), jnp.float32))
    return dec.logits(h + blk.mlp(blk.mlp_norm(h)))


@pytest.mark.parametrize(("position", "length"), [("rope", 13), ("none", 8)])
def test_grouped_softmax_model_matches_brute_force(position, length):
    model = _model(position)
    tokens = jnp.asarray(np.random.default_rng(length).integers(0, 16, (2, length)), jnp.int32)
    got = nnx.jit(lambda m, t: m(t))(model, tokens)
    want = _reference_forward(model, tokens, lambda q, k, v: _grouped_softmax_reference(q, k, v, BS))
    chex.assert_trees_all_close(got, want, atol=1e-4, rtol=1e-4)


def test_retrieval_of_every_block_is_causal_softmax_over_regular_tokens():
    model = _model(top_k=100)
    L = 13
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 16, (2, L)), jnp.int32)
    got = nnx.jit(lambda m, t: m(t))(model, tokens)
    blk = np.arange(L) // (BS + 1)
    is_lm = np.arange(L) % (BS + 1) == BS
    # Earlier landmarks are never attended; own-block tokens (a landmark query's own too) are.
    mask = ~is_lm[None, :] | (blk[None, :] == blk[:, None])
    want = _reference_forward(model, tokens, lambda q, k, v: attention(q, k, v, mask=mask[None, None]))
    chex.assert_trees_all_close(got, want, atol=1e-4, rtol=1e-4)


def test_top_k_limits_what_a_query_sees():
    """top_k=1: 4 heads retrieve at most 4 of 8 earlier blocks; tokens of the others do not matter."""
    model = _model(top_k=1)
    call = nnx.jit(lambda m, t: m(t))
    L = 8 * (BS + 1) + 2
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 15, (1, L)), jnp.int32)
    base = call(model, tokens)[0, -1]
    changed = [
        bool(jnp.any(jnp.abs(call(model, tokens.at[0, j].set(15 - tokens[0, j]))[0, -1] - base) > 1e-6))
        for j in range(0, 8 * (BS + 1))
        if j % (BS + 1) != BS
    ]
    assert 0 < sum(changed) <= 4 * BS < len(changed)


def test_passkey_batch_layout():
    rng = np.random.default_rng(0)
    batch = lmk.landmark_passkey_batch(rng, 4, 22, num_keys=4, vocab_size=16, block_size=BS)
    L = 23 + 23 // BS - 1
    chex.assert_shape(batch["inputs"], (4, L))
    lm_at = np.arange(L + 1) % (BS + 1) == BS
    full = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
    assert np.all(full[:, lm_at] == 15) and not np.any(full[:, ~lm_at] == 15)
    assert np.all(batch["loss_mask"].sum(axis=1) == 1) and np.all(batch["loss_mask"][:, -1] == 1)
    assert np.all(batch["inputs"][:, -1] == synthetic_passkey.QUERY_MARK)
    keys = batch["targets"][:, -1]
    assert np.all((keys >= synthetic_passkey.FIRST_KEY) & (keys < synthetic_passkey.FIRST_KEY + 4))
    for row, key in zip(batch["inputs"], keys, strict=True):
        after = row[np.flatnonzero(row == synthetic_passkey.KEY_MARK)[0] + 1 :][:2]
        assert key in after  # right after the marker, or after a landmark in between
    with pytest.raises(ValueError, match="landmark next to the last token"):
        lmk.landmark_passkey_batch(np.random.default_rng(0), 1, 20, num_keys=4, vocab_size=16, block_size=BS)
