"""init_from: params loaded into a model with a new position scheme, clear errors, trainer hook."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.train.checkpoint import Checkpointer
from longctx_jax.train.init_from import init_params_from
from longctx_jax.train.optimizer import make_optimizer
from longctx_jax.train.step import init_train_state
from longctx_jax.train.trainer import decoder_from_config, train_and_evaluate
from tests.train_trainer_test import small_config


def saved_run(tmp_path, config, step=5):
    """A run directory with one checkpoint of a (randomly initialised) model; returns its params."""
    _, params = nnx.split(decoder_from_config(config, 259))
    state = init_train_state(params, make_optimizer(config.optim, 10))
    checkpointer = Checkpointer(tmp_path / "run" / "checkpoints", keep=1, save_every=1)
    checkpointer.save(step, state)
    checkpointer.close()
    return params


def test_loads_params_into_model_with_new_rope_scaling(tmp_path):
    source = small_config()
    saved = saved_run(tmp_path, source)
    target = small_config()
    target.seed = 1  # a different fresh init, so loading visibly replaces it
    target.model.rope_scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    target.data.seq_len = 128
    _, fresh = nnx.split(decoder_from_config(target, 259))
    for where in ("run", "run/checkpoints", "run/checkpoints/5"):
        loaded, step = init_params_from(fresh, str(tmp_path / where))
        assert step == 5
    chex.assert_trees_all_equal(loaded, saved)
    assert not np.allclose(jax.tree.leaves(fresh)[0], jax.tree.leaves(saved)[0])
    # Same weights, new position scheme: the merged model rotates with the YaRN frequencies.
    graphdef, _ = nnx.split(decoder_from_config(target, 259))
    attn = nnx.merge(graphdef, loaded).layers[0].attn
    assert attn.cfg.rope_scaling_dict["rope_type"] == "yarn"
    x = jnp.ones((1, 1, 4, 8))
    plain = decoder_from_config(source, 259).layers[0].attn.rotate(x, jnp.full((1, 1), 20), 128)
    assert float(jnp.max(jnp.abs(attn.rotate(x, jnp.full((1, 1), 20), 128) - plain))) > 1e-2


def test_shape_mismatch_names_the_tensor(tmp_path):
    saved_run(tmp_path, small_config())
    wider = small_config()
    wider.model.mlp_dim = 96
    _, fresh = nnx.split(decoder_from_config(wider, 259))
    with pytest.raises(ValueError, match=r"layers/0/mlp/w_down.*\(64, 32\).*\(96, 32\)"):
        init_params_from(fresh, str(tmp_path / "run"))


def test_missing_tensor_is_named(tmp_path):
    saved_run(tmp_path, small_config())
    deeper = small_config()
    deeper.model.num_layers = 2
    _, fresh = nnx.split(decoder_from_config(deeper, 259))
    with pytest.raises(ValueError, match=r"missing from the checkpoint: \['layers/1/"):
        init_params_from(fresh, str(tmp_path / "run"))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    _, fresh = nnx.split(decoder_from_config(small_config(), 259))
    with pytest.raises(ValueError, match="does not exist"):
        init_params_from(fresh, str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match="no checkpoint"):
        init_params_from(fresh, str(tmp_path / "empty"))


@pytest.mark.slow
def test_trainer_fine_tunes_from_step_zero_with_pi(tmp_path):
    source = small_config(steps=3)
    base = train_and_evaluate(source, str(tmp_path / "base"))
    tuned = small_config(steps=2)
    tuned.train.init_from = str(tmp_path / "base")
    tuned.model.rope_scaling = {"rope_type": "linear", "factor": 2.0}
    tuned.data.seq_len = 64
    tuned.data.batch_size = 2
    before = init_params_from(nnx.split(decoder_from_config(tuned, 259))[1], str(tmp_path / "base"))[0]
    chex.assert_trees_all_equal(before, base["state"].params)
    out = train_and_evaluate(tuned, str(tmp_path / "tuned"))
    assert out["steps"] == 2  # counted from 0, not from the source's step 3
    assert np.isfinite(out["final_val_bpb"])
