"""Inputs refused or read as transformers reads them: both RoPE dicts, partial rotary, wide positions.

Each case here was read wrongly before (issue 19): `rope_parameters` won over `rope_scaling`,
a partial rotary factor of 0 passed the reader when the head dim was unknown, and int64
positions past the int32 range wrapped silently.
"""

import chex
import numpy as np
import pytest

from longctx_jax.positional.rope import apply_rope, rope_angles, rope_config_from_hf, rope_frequencies

LLAMA = {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 16384}


# ---- Both `rope_scaling` and `rope_parameters` (transformers 4.x reads only the first; 5.x's
# convert_rope_params_to_dict does `rope_parameters = rope_scaling or rope_parameters` and takes
# theta from that dict, else the top-level `rope_theta`). ----


def test_rope_scaling_wins_over_rope_parameters_with_top_level_theta():
    hf = dict(LLAMA, rope_theta=500000.0,
              rope_scaling={"rope_type": "linear", "factor": 4.0},
              rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 8.0,
                               "original_max_position_embeddings": 2048})
    assert rope_config_from_hf(hf) == (500000.0, {"rope_type": "linear", "factor": 4.0}, 1.0)


def test_rope_scaling_wins_and_rope_parameters_theta_is_not_used():
    hf = dict(LLAMA, rope_scaling={"type": "dynamic", "factor": 2.0},
              rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    cfg = rope_config_from_hf(hf)
    assert cfg.theta == 10000.0  # transformers' default theta; rope_parameters is discarded whole
    assert cfg.rope_scaling == {"rope_type": "dynamic", "factor": 2.0,
                                "original_max_position_embeddings": 16384}


def test_empty_rope_scaling_falls_back_to_rope_parameters():
    hf = dict(LLAMA, rope_theta=10000.0, rope_scaling=None,
              rope_parameters={"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0})
    assert rope_config_from_hf(hf) == (1e6, {"rope_type": "linear", "factor": 2.0}, 1.0)


# ---- Partial rotary factor outside (0, 1]: refused by the reader itself, head dim known or not. ----


@pytest.mark.parametrize("hf, key", [
    ({"partial_rotary_factor": 0}, "partial_rotary_factor"),
    ({"partial_rotary_factor": 0.0, "rope_theta": 1e4}, "partial_rotary_factor"),
    ({"partial_rotary_factor": -0.5}, "partial_rotary_factor"),
    ({"partial_rotary_factor": 1.5}, "partial_rotary_factor"),
    ({"rotary_pct": 0.0}, "rotary_pct"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0}},
     "partial_rotary_factor"),
    ({"rotary_dim": 0, "head_dim": 64}, "rotary_dim"),
])
def test_partial_rotary_outside_unit_interval_is_refused(hf, key):
    with pytest.raises(ValueError, match=rf"{key} must be .*got -?[0-9.]+"):
        rope_config_from_hf(hf)


def test_partial_rotary_inside_unit_interval_is_kept():
    cfg = rope_config_from_hf({"partial_rotary_factor": 0.25})
    assert cfg.partial_rotary_factor == 0.25
    assert cfg.rope_scaling == {"rope_type": "default", "partial_rotary_factor": 0.25}


# ---- Positions wider than int32. ----


@pytest.mark.parametrize("positions", [
    np.array([[0, 2**31]], np.int64),
    np.array([[-(2**31) - 1, 5]], np.int64),
    np.array([2**32 + 3], np.uint64),
    np.array([[2**31 + 7]], np.uint32),
    [[3, 2**40]],
])
def test_positions_beyond_int32_raise(positions):
    inv_freq, _ = rope_frequencies(8, 1e4)
    x = np.ones((1, np.asarray(positions).shape[-1], 1, 8), np.float32)
    with pytest.raises(ValueError, match=r"positions must fit int32"):
        apply_rope(x, positions, inv_freq)
    with pytest.raises(ValueError, match=r"positions must fit int32"):
        rope_angles(positions, inv_freq)


def test_int64_positions_inside_int32_equal_int32_positions():
    inv_freq, _ = rope_frequencies(16, 1e4)
    wide = np.array([[0, 7, 2**31 - 1, -(2**31)]], np.int64)
    chex.assert_trees_all_close(rope_angles(wide, inv_freq), rope_angles(wide.astype(np.int32), inv_freq),
                                rtol=0, atol=0)
