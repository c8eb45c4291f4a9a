"""Extension methods: config changes per method, weights shared, preset resolution."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import extend_smollm2
from longctx_jax.eval import extension
from longctx_jax.eval.extension import check_extension_config, spec_for
from longctx_jax.eval.methods import METHODS, config_changes, ramp_longrope_factors, with_config
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.positional.rope import rope_frequencies

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=64)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_valid_rope_and_mask(method):
    changes = config_changes(method, factor=2.0, train_length=8192, rotary_dim=64)
    inv_freq, _ = rope_frequencies(64, 1e5, changes["rope_scaling"], seq_len=16384)
    assert inv_freq.shape == (32,) and np.all(np.isfinite(inv_freq))
    if changes["rope_scaling"] is not None:
        assert changes["rope_scaling"]["rope_type"] == method and changes["rope_scaling"]["factor"] == 2.0
    assert changes["window"] == (8192 if method in ("sliding_window", "streaming") else None)
    assert changes["sinks"] == (4 if method == "streaming" else 0)


def test_longrope_ramp_and_unknown_method():
    f = ramp_longrope_factors(4.0, 64)
    assert f["long_factor"][0] == 1.0 and f["long_factor"][-1] == 4.0 and f["short_factor"] == [1.0] * 32
    assert np.all(np.diff(f["long_factor"]) > 0)
    with pytest.raises(ValueError, match="unknown extension method"):
        config_changes("pi", factor=2.0, train_length=8192, rotary_dim=64)


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
    assert full.methods == METHODS and max(full.eval.ppl_lengths) == 32768
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
