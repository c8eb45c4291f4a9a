"""One training step on a (2 data x 4 sequence) mesh with ring attention equals one device's."""

import chex
import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from longctx_jax.parallel import distributed
from longctx_jax.train.optimizer import make_optimizer
from longctx_jax.train.step import init_train_state, make_train_step
from longctx_jax.train.trainer import decoder_from_config

BATCH, LENGTH, VOCAB = 4, 32, 64


def _config(impl: str) -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.model.vocab_size = VOCAB
    config.model.d_model = 32
    config.model.num_layers = 1
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.mlp_dim = 64
    config.model.attention.impl = impl
    config.optim.warmup_steps = 0
    config.optim.eps = 1e-3  # keeps Adam's first update a smooth function of the gradient
    config.train.steps = 10
    return config


def _batch() -> dict[str, np.ndarray]:
    """Two packed documents per row: positions restart, segment ids separate them."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, size=(BATCH, LENGTH + 1))
    cut = LENGTH // 2 + 3
    positions = np.concatenate([np.arange(cut), np.arange(LENGTH - cut)])
    segment_ids = np.repeat([1, 2], [cut, LENGTH - cut])
    loss_mask = np.ones((BATCH, LENGTH), np.int32)
    loss_mask[:, cut - 1] = 0  # no loss across the document boundary
    return {
        "inputs": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "positions": np.broadcast_to(positions, (BATCH, LENGTH)).astype(np.int32),
        "segment_ids": np.broadcast_to(segment_ids, (BATCH, LENGTH)).astype(np.int32),
        "loss_mask": loss_mask,
    }


def _one_step(impl: str, mesh, layout: str = "natural"):
    config = _config(impl)
    graphdef, params = nnx.split(decoder_from_config(config, VOCAB))
    tx = make_optimizer(config.optim, int(config.train.steps))
    state = distributed.shard_state(init_train_state(params, tx), mesh)
    step = distributed.on_mesh(make_train_step(graphdef, tx, use_segment_ids=True), mesh, layout)
    state, metrics = step(state, _batch())
    return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("layout", [pytest.param("natural", marks=pytest.mark.slow), "zigzag"])
def test_ring_step_on_2x4_mesh_equals_single_device_step(layout):
    mesh_cfg = distributed.default_mesh_config()
    mesh_cfg.data, mesh_cfg.sequence, mesh_cfg.layout = 2, 4, layout
    config = ml_collections.ConfigDict({"mesh": mesh_cfg})
    mesh = distributed.mesh_from_config(config)
    want_state, want_metrics = _one_step("dense", None)
    got_state, got_metrics = _one_step("ring", mesh, layout)
    chex.assert_trees_all_close(got_metrics, want_metrics, atol=1e-4, rtol=1e-4)
    chex.assert_trees_all_close(got_state.params, want_state.params, atol=1e-4, rtol=1e-4)
    chex.assert_trees_all_close(got_state.opt_state, want_state.opt_state, atol=1e-4, rtol=1e-4)


def test_state_is_sharded_by_logical_axes():
    config = _config("ring")
    mesh_cfg = distributed.default_mesh_config()
    mesh_cfg.data, mesh_cfg.sequence, mesh_cfg.tensor = 2, 2, 2
    mesh = distributed.mesh_from_config(ml_collections.ConfigDict({"mesh": mesh_cfg}))
    graphdef, params = nnx.split(decoder_from_config(config, VOCAB))
    tx = make_optimizer(config.optim, 10)
    state = distributed.shard_state(init_train_state(params, tx), mesh)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
    assert any("tensor" in s for s in specs)
    params_def = jax.tree.structure(state.params)
    def like_params(tree):
        return jax.tree.structure(tree) == params_def

    moments = [t for t in jax.tree.leaves(state.opt_state, is_leaf=like_params) if like_params(t)]
    assert len(moments) == 2  # Adam's mu and nu
    param_specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
    for moment in moments:
        assert [x.sharding.spec for x in jax.tree.leaves(moment)] == param_specs
    batch = distributed.shard_batch(_batch(), mesh)
    assert batch["inputs"].sharding.spec == jax.P(("data", "fsdp"), "sequence")


def test_bad_mesh_config_raises():
    mesh_cfg = distributed.default_mesh_config()
    mesh_cfg.layout = "spiral"
    with pytest.raises(ValueError, match="layout"):
        distributed.mesh_from_config(ml_collections.ConfigDict({"mesh": mesh_cfg}))
    mesh_cfg.layout, mesh_cfg.data, mesh_cfg.sequence = "natural", 4, 4
    with pytest.raises(ValueError, match="devices"):
        distributed.mesh_from_config(ml_collections.ConfigDict({"mesh": mesh_cfg}))
