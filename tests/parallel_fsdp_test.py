"""FSDP: a train step on fsdp x sequence and data x fsdp meshes equals one device's; state is sharded."""

import chex
import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from longctx_jax import sharding
from longctx_jax.bench import memory
from longctx_jax.parallel import distributed
from longctx_jax.train.optimizer import make_optimizer
from longctx_jax.train.step import init_train_state, make_train_step
from longctx_jax.train.trainer import decoder_from_config, train_and_evaluate

LENGTH, VOCAB, D_MODEL = 32, 64, 32


def _config(impl: str) -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.model.update(vocab_size=VOCAB, d_model=D_MODEL, num_layers=1, num_heads=4, num_kv_heads=2,
                        mlp_dim=64)
    config.model.attention.impl = impl
    config.optim.warmup_steps = 0
    config.optim.eps = 1e-3  # keeps Adam's first update a smooth function of the gradient
    config.train.steps = 10
    return config


def _mesh(**sizes: int) -> jax.sharding.Mesh:
    mesh_cfg = distributed.default_mesh_config()
    mesh_cfg.update(sizes)
    return distributed.mesh_from_config(ml_collections.ConfigDict({"mesh": mesh_cfg}))


def _batch(batch_size: int) -> dict[str, np.ndarray]:
    """Two packed documents per row: positions restart, segment ids separate them."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, VOCAB, size=(batch_size, LENGTH + 1))
    cut = LENGTH // 2 - 5
    positions = np.concatenate([np.arange(cut), np.arange(LENGTH - cut)])
    segment_ids = np.repeat([1, 2], [cut, LENGTH - cut])
    loss_mask = np.ones((batch_size, LENGTH), np.int32)
    loss_mask[:, cut - 1] = 0
    return {
        "inputs": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "positions": np.broadcast_to(positions, (batch_size, LENGTH)).astype(np.int32),
        "segment_ids": np.broadcast_to(segment_ids, (batch_size, LENGTH)).astype(np.int32),
        "loss_mask": loss_mask,
    }


def _sharded_state(impl: str, mesh):
    config = _config(impl)
    graphdef, params = nnx.split(decoder_from_config(config, VOCAB))
    tx = make_optimizer(config.optim, int(config.train.steps))
    return graphdef, tx, distributed.shard_state(init_train_state(params, tx), mesh)


def _one_step(impl: str, mesh, batch):
    graphdef, tx, state = _sharded_state(impl, mesh)
    step = distributed.on_mesh(make_train_step(graphdef, tx, use_segment_ids=True), mesh)
    state, metrics = step(state, batch)
    return state, jax.device_get(metrics)


@pytest.mark.parametrize("sizes,impl", [
    ({"fsdp": 4, "sequence": 2}, "ring"),
    pytest.param({"data": 2, "fsdp": 4}, "dense", marks=pytest.mark.slow),
])
def test_fsdp_step_equals_single_device_step(sizes, impl):
    batch = _batch(8)
    want_state, want_metrics = _one_step("dense", None, batch)
    got_state, got_metrics = _one_step(impl, _mesh(**sizes), batch)
    chex.assert_trees_all_close(got_metrics, want_metrics, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(jax.device_get(got_state.params), jax.device_get(want_state.params),
                                atol=1e-4, rtol=1e-4)
    chex.assert_trees_all_close(jax.device_get(got_state.opt_state), jax.device_get(want_state.opt_state),
                                atol=1e-4, rtol=1e-4)
    # The updated state keeps its sharding (the step does not gather it).
    wq = got_state.params["layers"][0]["attn"]["wq"][...]
    ways = sizes.get("fsdp", 1) * sizes.get("sequence", 1)
    assert wq.addressable_shards[0].data.shape == (D_MODEL // ways, 4, D_MODEL // 4)


def test_params_and_adam_moments_are_sharded_over_fsdp_and_sequence():
    mesh = _mesh(fsdp=4, sequence=2)
    _, _, state = _sharded_state("ring", mesh)
    mu, nu = state.opt_state[1][0].mu, state.opt_state[1][0].nu  # clip, then adamw's scale_by_adam
    for tree in (state.params, mu, nu):
        wq = tree["layers"][0]["attn"]["wq"][...]
        assert wq.sharding.spec == jax.P(("fsdp", "sequence"), None, None)
        chex.assert_shape([s.data for s in wq.addressable_shards], (D_MODEL // 8, 4, D_MODEL // 4))
        w_down = tree["layers"][0]["mlp"]["w_down"][...]  # [mlp, embed]: embed is the split dim
        chex.assert_shape(w_down.addressable_shards[0].data, (64, D_MODEL // 8))
        embed = tree["embed"][...]
        chex.assert_shape(embed.addressable_shards[0].data, (VOCAB, D_MODEL // 8))
    held = sum(int(np.prod(x.addressable_shards[0].data.shape)) for x in jax.tree.leaves(state.params))
    total = sum(x.size for x in jax.tree.leaves(state.params))
    assert held * 8 == total  # every parameter (norm scales included) is split 8 ways
    batch = distributed.shard_batch(_batch(8), mesh)
    assert batch["inputs"].sharding.spec == jax.P(("data", "fsdp"), "sequence")
    chex.assert_shape(batch["inputs"].addressable_shards[0].data, (2, LENGTH // 2))


def test_mesh_must_use_every_device():
    with pytest.raises(ValueError, match=r"fsdp=2 x sequence=2 x tensor=1 = 4 devices, but 8"):
        _mesh(fsdp=2, sequence=2)
    with pytest.raises(ValueError, match="config.mesh.fsdp must be a positive integer, got 0"):
        _mesh(fsdp=0, sequence=8)


def test_batch_and_sequence_must_divide_their_axes():
    mesh = _mesh(data=2, fsdp=2, sequence=2)
    distributed.check_batch_shape(4, 32, mesh)
    with pytest.raises(ValueError, match=r"sequence length 31 is not divisible by the mesh's sequence = 2"):
        distributed.check_batch_shape(4, 31, mesh)
    with pytest.raises(ValueError, match=r"sequence length 34 .* 2 x sequence = 4 \(zig-zag"):
        distributed.check_batch_shape(4, 34, mesh, "zigzag")
    with pytest.raises(ValueError, match=r"batch_size 6 is not divisible by mesh data x fsdp = 4"):
        distributed.check_batch_shape(6, 32, mesh)


def test_parameter_dim_not_divisible_by_its_axes_raises():
    config = _config("ring")
    config.model.update(d_model=36, num_heads=2)  # 36 is not divisible by fsdp x sequence = 8
    _, params = nnx.split(decoder_from_config(config, VOCAB))
    with pytest.raises(ValueError, match=r"\['embed'\].*'embed' of size 36 .* fsdp=4 x sequence=2 = 8"):
        sharding.state_shardings(params, _mesh(fsdp=4, sequence=2))


def test_trainer_refuses_a_sequence_length_the_ring_cannot_split(tmp_path):
    config = _config("ring")
    config.mesh = distributed.default_mesh_config()
    config.mesh.fsdp, config.mesh.sequence = 2, 4
    config.data.seq_len, config.data.batch_size = 30, 2
    with pytest.raises(ValueError, match="sequence length 30 is not divisible by the mesh's sequence = 4"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_compiled_arguments_equal_the_bytes_the_shardings_hold():
    shape = {"vocab_size": VOCAB, "d_model": D_MODEL, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
             "mlp_dim": 64, "tie_embeddings": False}
    optim = _config("ring").optim
    row = memory.compile_row(shape, 64, {"fsdp": 4, "sequence": 2}, optim)
    total_params = VOCAB * D_MODEL * 2 + 2 * (4 * D_MODEL * 8 * 2 + 2 * D_MODEL * 8 * 2 + 3 * D_MODEL * 64
                                               + 2 * D_MODEL) + D_MODEL
    assert row["param_bytes"] * 8 == total_params * 4  # float32, split 8 ways
    assert row["opt_state_bytes"] == 2 * row["param_bytes"] + 8  # mu, nu; Adam and schedule int32 counts
    assert row["batch_bytes"] == 5 * (4 * 64 // 8) * 4  # five int32 [4, 64] arrays split 8 ways
    # XLA's arguments are exactly the state and batch shards (+ the int32 step).
    assert row["argument_bytes"] == row["param_bytes"] + row["opt_state_bytes"] + row["batch_bytes"] + 4
    assert row["alias_bytes"] > 0 and row["temp_bytes"] > 0  # donated state; activations
