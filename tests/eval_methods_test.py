"""Extension methods: config changes per method, weights shared, preset resolution."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import extend_smollm2
from longctx_jax.eval import extension
from longctx_jax.eval.extension import check_extension_config, spec_for
from longctx_jax.eval.methods import (
    DERIVED_ROPE_METHODS,
    METHODS,
    STANDALONE_METHODS,
    config_changes,
    linear_ramp_factors,
    with_config,
)
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.positional.rope import rope_frequencies

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=64)


SEARCHED = {"short_factor": [1.0] * 32, "long_factor": list(np.linspace(1.0, 2.5, 32))}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_valid_rope_and_mask(method):
    changes = config_changes(method, factor=2.0, train_length=8192, rotary_dim=64, longrope=SEARCHED)
    inv_freq, _ = rope_frequencies(64, 1e5, changes["rope_scaling"], seq_len=16384)
    assert inv_freq.shape == (32,) and np.all(np.isfinite(inv_freq))
    if changes["rope_scaling"] is not None:
        rope_type = DERIVED_ROPE_METHODS.get(method, method)
        assert changes["rope_scaling"]["rope_type"] == rope_type and changes["rope_scaling"]["factor"] == 2.0
    assert changes["window"] == (8192 if method in ("sliding_window", "streaming") else None)
    assert changes["sinks"] == (4 if method == "streaming" else 0)


def test_linear_ramp_and_unknown_method():
    f = linear_ramp_factors(4.0, 64)
    chex.assert_trees_all_close(np.asarray(f["long_factor"]), 1.0 + 3.0 * np.arange(32) / 31, atol=1e-12)
    assert f["short_factor"] == [1.0] * 32
    rope = config_changes("linear_ramp", factor=4.0, train_length=8192, rotary_dim=64)["rope_scaling"]
    assert rope["rope_type"] == "longrope" and rope["long_factor"] == f["long_factor"]
    with pytest.raises(ValueError, match="unknown extension method"):
        config_changes("pi", factor=2.0, train_length=8192, rotary_dim=64)


def test_longrope_needs_searched_factors_and_says_what_the_ramp_became():
    with pytest.raises(ValueError, match="needs searched LongRoPE factors.*now the method 'linear_ramp'"):
        config_changes("longrope", factor=2.0, train_length=8192, rotary_dim=64)
    rope = config_changes("longrope", factor=2.0, train_length=8192, rotary_dim=64, longrope=SEARCHED)
    assert rope["rope_scaling"]["long_factor"] == SEARCHED["long_factor"]
    config = extend_smollm2.get_config()
    config.methods = ("none", "longrope")
    with pytest.raises(ValueError, match="now the method 'linear_ramp'"):
        check_extension_config(config)
    config.longrope = SEARCHED
    check_extension_config(config)


def test_yarn_with_longrope_temperature_differs_from_yarn_only_in_the_attention_factor():
    yarn = config_changes("yarn", factor=2.0, train_length=8192, rotary_dim=64)["rope_scaling"]
    temp = config_changes("yarn_longrope_temperature", factor=2.0, train_length=8192,
                          rotary_dim=64)["rope_scaling"]
    f_yarn, a_yarn = rope_frequencies(64, 1e5, yarn, seq_len=16384)
    f_temp, a_temp = rope_frequencies(64, 1e5, temp, seq_len=16384)
    chex.assert_trees_all_close(np.asarray(f_temp), np.asarray(f_yarn), atol=0, rtol=0)
    assert a_yarn == pytest.approx(0.1 * np.log(2.0) + 1.0, abs=1e-6)
    assert a_temp == pytest.approx(np.sqrt(1.0 + np.log(2.0) / np.log(8192)), abs=1e-6)


def test_longrope_phi3_uses_phi3_attention_factor_and_mapped_lists():
    rope = config_changes("longrope_phi3", factor=2.0, train_length=8192, rotary_dim=64)["rope_scaling"]
    assert len(rope["long_factor"]) == 32 and len(rope["short_factor"]) == 32
    _, attention = rope_frequencies(64, 1e5, rope, seq_len=16384)
    assert attention == pytest.approx(np.sqrt(1.0 + np.log(2.0) / np.log(8192)), abs=1e-6)


def test_with_config_shares_weights_and_matches_a_fresh_model():
    base = Decoder(CFG, rngs=nnx.Rngs(0))
    changes = config_changes("yarn", factor=2.0, train_length=16, rotary_dim=CFG.head_dim)
    moved = with_config(base, **changes)
    fresh = Decoder(CFG.replace(**changes), rngs=nnx.Rngs(0))
    tokens = jnp.arange(32)[None, :] % 64
    chex.assert_trees_all_close(moved(tokens), fresh(tokens), atol=1e-5, rtol=1e-5)
    assert moved.cfg.rope_scaling_dict["rope_type"] == "yarn" and base.cfg.rope_scaling is None
    assert moved.embed[...] is base.embed[...]


def test_variants_and_method_lists():
    config = extend_smollm2.get_config()
    assert config.methods == ("none", "yarn") and 16384 in config.eval.ppl_lengths
    assert spec_for(config, "dynamic").passkey_lengths == () and spec_for(config, "yarn").passkey_lengths
    assert spec_for(config, "dynamic").ppl_lengths == (16384,)
    assert len(spec_for(config, "none").ppl_lengths) > 1
    check_extension_config(config)
    config.method_eval.yran = {"ppl_lengths": (4096,)}
    with pytest.raises(ValueError, match="method_eval names unknown method.*'yran'"):
        check_extension_config(config)
    del config.method_eval["yran"]
    config.method_eval.dynamic.ppl_length = (4096,)
    with pytest.raises(ValueError, match="unknown eval fields"):
        check_extension_config(config)
    full = extend_smollm2.get_config("full")
    assert full.methods == STANDALONE_METHODS and "longrope" not in full.methods
    assert {"linear_ramp", "longrope_phi3", "yarn_longrope_temperature"} <= set(full.methods)
    assert max(full.eval.ppl_lengths) == 32768
    check_extension_config(full)
    with pytest.raises(ValueError, match="unknown variant"):
        extend_smollm2.get_config("huge")


@pytest.mark.parametrize("field", ["methods", "passkey_methods", "niah_methods"])
def test_misspelt_method_is_refused_before_any_work(field):
    config = extend_smollm2.get_config()
    config[field] = ("none", "yran")
    with pytest.raises(ValueError, match=rf"config.{field}: unknown extension method.*'yran'"):
        check_extension_config(config)


def test_run_extension_validates_before_loading_the_model(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(extension, "load_gguf", never)
    config = extend_smollm2.get_config()
    config.methods = ("none", "yarn", "yran")
    with pytest.raises(ValueError, match="'yran'"):
        extension.run_extension(config)


def test_bad_lengths_are_refused():
    config = extend_smollm2.get_config()
    config.target_length = -4096
    with pytest.raises(ValueError, match="target_length must be positive"):
        check_extension_config(config)
