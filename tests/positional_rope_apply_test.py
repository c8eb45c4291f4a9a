"""apply_rope / rope_angles against a float64 NumPy rotation; relative positions; precision."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.positional.rope import apply_rope, rope_angles, rope_frequencies

L = 4096
SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "ntk": {"rope_type": "ntk", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0, "original_max_position_embeddings": L},
    "yarn": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": L},
    "longrope": {"rope_type": "longrope", "factor": 16.0, "original_max_position_embeddings": L,
                 "short_factor": np.linspace(1.0, 1.5, 32).tolist(),
                 "long_factor": np.linspace(1.0, 16.0, 32).tolist()},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": L},
}


def ref_rope(x, positions, inv_freq, factor=1.0, interleaved=False):
    """Float64 rotation written pair by pair: (a, b) -> factor * (a cos - b sin, b cos + a sin)."""
    x = np.asarray(x, np.float64)
    positions = np.broadcast_to(np.asarray(positions, np.int64), x.shape[:2])
    inv_freq = np.asarray(inv_freq, np.float64)
    out = x.copy()
    half = len(inv_freq)
    for i, f in enumerate(inv_freq):
        a_idx, b_idx = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
        angle = (positions * f)[:, :, None]
        a, b = x[..., a_idx], x[..., b_idx]
        out[..., a_idx] = factor * (a * np.cos(angle) - b * np.sin(angle))
        out[..., b_idx] = factor * (b * np.cos(angle) + a * np.sin(angle))
    return out


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("shape, partial", [((2, 7, 3, 16), 1.0), ((1, 5, 2, 20), 0.4)])
def test_apply_rope_matches_float64_reference(interleaved, jit, shape, partial):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    positions = rng.integers(0, 100_000, shape[:2]).astype(np.int32)
    inv_freq, factor = rope_frequencies(shape[-1], 1e4, {"rope_type": "yarn", "factor": 4.0,
                                                         "original_max_position_embeddings": 64,
                                                         "partial_rotary_factor": partial})
    fn = jax.jit(apply_rope, static_argnames="interleaved") if jit else apply_rope
    out = fn(x, positions, inv_freq, factor, interleaved=interleaved)
    chex.assert_shape(out, shape)
    chex.assert_trees_all_close(out, ref_rope(x, positions, inv_freq, factor, interleaved).astype(np.float32),
                                rtol=1e-5, atol=1e-5)
    rotary_dim = 2 * len(inv_freq)
    np.testing.assert_array_equal(np.asarray(out)[..., rotary_dim:], x[..., rotary_dim:])


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_scores_depend_only_on_relative_position(name):
    head_dim = 64
    inv_freq, factor = rope_frequencies(head_dim, 1e4, SCALINGS[name], seq_len=2 * L)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 1, 1, head_dim)).astype(np.float32)
    k = rng.standard_normal((1, 1, 1, head_dim)).astype(np.float32)
    m, n = np.array([[7, 300, 5000]], np.int32), np.array([[0, 41, 4000]], np.int32)

    def scores(shift):
        qs = apply_rope(np.repeat(q, 3, axis=1), m + shift, inv_freq, factor)
        ks = apply_rope(np.repeat(k, 3, axis=1), n + shift, inv_freq, factor)
        return jnp.sum(qs * ks, axis=-1)

    base = scores(0)
    for shift in (1, 999, 1_000_000, 50_000_000):
        chex.assert_trees_all_close(scores(shift), base, rtol=1e-4, atol=1e-4)
    assert not np.allclose(scores(0)[0, 0], scores(0)[0, 1])  # the score does depend on m - n


@pytest.mark.parametrize("base", [1e4, 5e5, 1e6])
def test_angles_exact_at_large_positions(base):
    inv_freq, _ = rope_frequencies(128, base)
    positions = np.array([0, 10, 1_000_000, 16_777_217, 123_456_789, 2**31 - 1, -5], np.int32)
    angles = np.asarray(rope_angles(positions, inv_freq))[0]
    ref = positions.astype(np.float64)[:, None] * inv_freq.astype(np.float64)[None, :]
    error = np.abs(np.angle(np.exp(1j * (angles - ref))))
    assert error.max() < 1e-5
    assert np.all(np.abs(angles) <= math.pi + 1e-6)
    # The plain float32 product the bound is measured against is ~1e4 times worse at 1e6.
    naive = (positions.astype(np.float32)[:, None] * inv_freq[None, :]).astype(np.float64)
    assert np.abs(np.angle(np.exp(1j * (naive - ref))))[2].max() > 1e-3


def test_bfloat16_at_position_one_million_matches_float64():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((1, 4, 2, 128)), jnp.bfloat16)
    positions = np.array([[1_000_000, 1_000_001, 999_999, 10]], np.int32)
    inv_freq, factor = rope_frequencies(128, 5e5, SCALINGS["llama3"])
    out = apply_rope(x, positions, inv_freq, factor)
    assert out.dtype == jnp.bfloat16
    ref = ref_rope(np.asarray(x, np.float64), positions, inv_freq, factor)
    # bf16 rounds to 2^-8 relative: the only error left is the output cast.
    chex.assert_trees_all_close(np.asarray(out, np.float64), ref, rtol=2**-8, atol=2**-8)
    f32 = apply_rope(np.asarray(x, np.float32), positions, inv_freq, factor)
    chex.assert_trees_all_close(np.asarray(f32, np.float64), ref, rtol=1e-5, atol=1e-5)


def wrapped(a, b):
    return np.abs(np.angle(np.exp(1j * (np.asarray(a, np.float64) - np.asarray(b, np.float64)))))


def test_position_interpolation_maps_factor_p_to_p():
    plain, _ = rope_frequencies(64, 1e4)
    p = np.arange(0, 5000, 7, dtype=np.int32)
    for factor in (2, 4, 3):
        linear, _ = rope_frequencies(64, 1e4, {"rope_type": "linear", "factor": factor})
        error = wrapped(rope_angles(p * factor, linear), rope_angles(p, plain))
        # Dividing by 2 or 4 is exact in float32; by 3 it rounds inv_freq by <= 2^-24 relative,
        # which moves the angle at position 3p by at most 3p * inv_freq * 2^-24.
        bound = 1e-5 + (0 if factor in (2, 4) else 3 * p.max() * 2.0**-24)
        assert error.max() < bound


def test_offsets_and_packed_positions_match_full_sequence():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 12, 2, 32)).astype(np.float32)
    inv_freq, _ = rope_frequencies(32, 1e4)
    full = apply_rope(x, np.arange(12, dtype=np.int32), inv_freq)
    # KV-cache decode: the last 4 tokens at offsets 8..11.
    chex.assert_trees_all_close(apply_rope(x[:, 8:], np.arange(8, 12), inv_freq), full[:, 8:], atol=1e-6)
    # Packed documents restart at 0: the second document equals the first positions.
    packed = np.concatenate([np.arange(5), np.arange(7)]).astype(np.int32)
    out = apply_rope(x, packed, inv_freq)
    chex.assert_trees_all_close(out[:, 5:], apply_rope(x[:, 5:], np.arange(7), inv_freq), atol=1e-6)


def test_longrope_unscaled_first_positions():
    cfg = SCALINGS["longrope"]
    scaled, factor = rope_frequencies(64, 1e4, cfg, seq_len=2 * L)
    plain, _ = rope_frequencies(64, 1e4)
    positions = np.array([[0, 3, 7, 8, 9, 100]], np.int32)
    angles = rope_angles(positions, scaled, unscaled_inv_freq=plain, num_unscaled=8)
    chex.assert_trees_all_close(angles[:, :3], rope_angles(positions[:, :3], plain), atol=1e-6)
    chex.assert_trees_all_close(angles[:, 3:], rope_angles(positions[:, 3:], scaled), atol=1e-6)
    x = np.ones((1, 6, 1, 64), np.float32)
    out = apply_rope(x, positions, scaled, factor, unscaled_inv_freq=plain, num_unscaled=8)
    chex.assert_trees_all_close(out[:, :3], apply_rope(x[:, :3], positions[:, :3], plain, factor), atol=1e-6)


def test_bad_inputs_raise():
    inv_freq, _ = rope_frequencies(64, 1e4)
    x = np.zeros((1, 3, 1, 32), np.float32)
    with pytest.raises(ValueError, match="exceeds head_dim"):
        apply_rope(x, np.arange(3), inv_freq)
    with pytest.raises(ValueError, match="integer position ids"):
        apply_rope(np.zeros((1, 3, 1, 64), np.float32), np.arange(3.0), inv_freq)
    with pytest.raises(ValueError, match="unscaled_inv_freq"):
        rope_angles(np.arange(3), inv_freq, unscaled_inv_freq=inv_freq[:4], num_unscaled=2)
