"""Tests for LongRoPE's evolutionary search: constraints, batched fitness, resume, saved dict."""

import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.positional import rope_scaling as scaling
from longctx_jax.positional.rope import rope_frequencies
from longctx_jax.search import longrope

CFG = ModelConfig(
    vocab_size=32,
    d_model=32,
    num_layers=1,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=64,
    rope_theta=100.0,
    init_std=0.2,
)
SPACE = longrope.SearchSpace(
    rotary_dim=CFG.head_dim, base=CFG.rope_theta, original_length=16, factor=2.0, n_hat_choices=(0, 2, 4)
)


def _model(cfg=CFG):
    return Decoder(cfg, rngs=nnx.Rngs(0))


def _docs(num=2, length=33, seed=0):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (num, length)).astype(np.int32)


def test_constraints_hold_for_mutations_and_crossovers():
    rng = np.random.default_rng(0)
    population = longrope.initial_population(SPACE, 12, rng)
    assert len({c.key() for c in population}) == len(population) == 12
    for _ in range(200):
        a, b = (population[i] for i in rng.choice(len(population), 2, replace=False))
        for child in (
            longrope.mutate(a, SPACE, rng, prob=0.9, sigma=0.5),
            longrope.crossover(a, b, SPACE, rng),
        ):
            f = np.asarray(child.factors)
            assert f.shape == (SPACE.num_bands,)
            assert np.all(f >= 1.0) and np.all(f <= SPACE.max_factor)
            assert np.all(np.diff(f) >= 0), f
            assert child.n_hat in SPACE.n_hat_choices


def test_reference_candidates():
    refs = longrope.reference_candidates(SPACE)
    np.testing.assert_allclose(refs["pi"].factors, 2.0)
    ntk = np.asarray(refs["ntk"].factors)
    assert ntk[0] == 1.0 and abs(ntk[-1] - 2.0) < 1e-3  # NTK: fastest band kept, slowest divided by s
    assert SPACE.max_factor == 2.5


@nnx.jit
def _call(model, tokens):
    return model(tokens)


@pytest.mark.parametrize("num_layers", [None, 0])
def test_forward_with_model_frequencies_matches_decoder(num_layers):
    model = _model()
    tokens = jnp.asarray(_docs(2, 12))
    inv_freq, _ = rope_frequencies(CFG.head_dim, CFG.rope_theta, None)
    got = nnx.jit(longrope.forward_with_frequencies, static_argnames="num_layers")(
        model, tokens, jnp.asarray(inv_freq), num_layers=num_layers
    )
    if num_layers is not None:  # 0: embeddings and logits only
        model = nnx.merge(*nnx.split(model))
        model.layers = nnx.List(list(model.layers)[:num_layers])
    chex.assert_trees_all_close(got, _call(model, tokens), atol=1e-4, rtol=1e-4)


def _nll(model, docs):
    logits = _call(model, jnp.asarray(docs[:, :-1]))
    return float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(docs[:, 1:]))))


def test_population_nll_matches_decoder_built_from_saved_dict():
    """The batched fitness equals a Decoder configured with the winner's longrope dict."""
    model = _model()
    docs = _docs(2, 2 * SPACE.original_length + 1)
    rng = np.random.default_rng(1)
    population = longrope.initial_population(SPACE, 3, rng)
    base = SPACE.base_inv_freq()
    inv = np.stack([base / np.asarray(c.factors) for c in population])
    got = longrope.population_nll(
        model,
        docs,
        inv,
        np.zeros(3, np.int32),
        unscaled_inv_freq_R=base,
        attention_factor=SPACE.attention_factor(),
        chunk=2,
    )
    graphdef, state = nnx.split(model)
    for c, value in zip(population, got, strict=True):
        rope = longrope.longrope_scaling(c, SPACE)
        rope = json.loads(json.dumps(rope))  # what the experiment writes and a loader reads back
        scaled = nnx.merge(nnx.split(Decoder(CFG.replace(rope_scaling=rope), rngs=nnx.Rngs(0)))[0], state)
        assert abs(_nll(scaled, docs) - float(value)) < 1e-4
    assert graphdef is not None


@pytest.mark.slow
def test_population_nll_n_hat_matches_unbatched_forward():
    model = _model()
    docs = _docs(1, 2 * SPACE.original_length + 1)
    base = SPACE.base_inv_freq()
    factors = np.linspace(1.0, 2.0, SPACE.num_bands)
    inv = base / factors
    n_hats = np.asarray([0, 4, 12], np.int32)
    got = longrope.population_nll(
        model, docs, np.stack([inv] * 3), n_hats, unscaled_inv_freq_R=base, attention_factor=1.3, chunk=3
    )
    for n_hat, value in zip(n_hats, got, strict=True):
        logits = nnx.jit(longrope.forward_with_frequencies)(
            model,
            jnp.asarray(docs[:, :-1]),
            jnp.asarray(inv),
            attention_factor=1.3,
            unscaled_inv_freq_R=jnp.asarray(base),
            n_hat=jnp.int32(n_hat),
        )
        want = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(docs[:, 1:])))
        assert abs(float(want) - float(value)) < 1e-4
    assert got[0] != got[1]  # n_hat changes the first positions' rotation


def test_search_resume_is_exact_and_improves_on_the_initial_best(tmp_path):
    model = _model()
    docs = _docs(2, 2 * SPACE.original_length + 1)
    kwargs = dict(population_size=6, num_parents=3, seed=3, chunk=3, log=lambda _: None)
    full = longrope.search(model, docs, SPACE, state_path=str(tmp_path / "a.json"), generations=3, **kwargs)
    path_b = str(tmp_path / "b.json")
    longrope.search(model, docs, SPACE, state_path=path_b, generations=1, **kwargs)
    resumed = longrope.search(model, docs, SPACE, state_path=path_b, generations=3, **kwargs)
    assert resumed.to_json() == full.to_json()
    assert full.generation == 3
    first = min(r["nll"] for r in full.history if r["generation"] == 0)
    assert full.best()[1] <= first
    rope = longrope.longrope_scaling(full.best()[0], SPACE)
    inv_freq, factor = rope_frequencies(CFG.head_dim, CFG.rope_theta, rope, seq_len=SPACE.target_length)
    np.testing.assert_allclose(inv_freq, SPACE.base_inv_freq() / np.asarray(rope["long_factor"]), rtol=1e-6)
    assert math.isclose(factor, scaling.longrope_attention_factor(2.0, 16))
    assert jax.tree.leaves(rope)
