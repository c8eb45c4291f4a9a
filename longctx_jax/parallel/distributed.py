"""Training on a `data x fsdp x sequence (x tensor)` mesh: config -> mesh, sharded state and batches.

The trainer calls five things from here:
  `initialize(config)`        `jax.distributed.initialize()` when `config.mesh.distributed`
                              (one process per host on a TPU pod slice / multi-GPU node);
  `mesh_from_config(config)`  the mesh of `config.mesh` (None when the config has no mesh);
  `check_batch_shape(config, mesh)`  batch and sequence length divisible by their mesh axes;
  `shard_state(state, mesh)`  params and optimizer state placed by their logical axes
                              (`longctx_jax.sharding.LOGICAL_AXIS_RULES`);
  `shard_batch(batch, mesh, layout)`  `[batch, length]` arrays split over (data x fsdp, sequence),
                              optionally permuted into a load-balanced causal layout
                              (zig-zag / striped; `parallel.layout`) with global positions;
and wraps its jitted steps with `on_mesh`, which shards each batch and keeps `jax.set_mesh`
in effect at every call (ring attention finds its mesh there).

    config.mesh.data, .fsdp, .sequence, .tensor   axis sizes (product = device count)
    config.mesh.layout                     "natural" | "zigzag" | "striped"
    config.mesh.distributed                call jax.distributed.initialize()
See docs/distributed.md.
"""

import functools
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from longctx_jax import sharding
from longctx_jax.parallel import layout as layouts
from longctx_jax.typing import PyTree


def default_mesh_config() -> ml_collections.ConfigDict:
    """`config.mesh` defaults: one device, natural layout, single process."""
    cfg = ml_collections.ConfigDict()
    cfg.data = 1
    cfg.fsdp = 1
    cfg.sequence = 1
    cfg.tensor = 1
    cfg.layout = "natural"
    cfg.distributed = False
    cfg.coordinator_address = ml_collections.config_dict.placeholder(str)
    cfg.num_processes = ml_collections.config_dict.placeholder(int)
    cfg.process_id = ml_collections.config_dict.placeholder(int)
    return cfg


_INIT_FIELDS = ("coordinator_address", "num_processes", "process_id")


def initialize(config: ml_collections.ConfigDict) -> None:
    """Starts multi-process JAX when `config.mesh.distributed` is set (before any JAX work).

    On TPU pod slices, Slurm and Open MPI, `jax.distributed.initialize()` reads the
    coordinator, process count and process id from the environment; elsewhere set
    `config.mesh.coordinator_address`, `.num_processes` and `.process_id`.
    """
    mesh_cfg = config.get("mesh")
    if mesh_cfg is None or not mesh_cfg.get("distributed", False):
        return
    kwargs = {name: mesh_cfg.get(name) for name in _INIT_FIELDS if mesh_cfg.get(name) is not None}
    jax.distributed.initialize(**kwargs)


def mesh_from_config(config: ml_collections.ConfigDict) -> jax.sharding.Mesh | None:
    """The training mesh (Auto axes: XLA propagates shardings through the model), or None.

    Raises:
      ValueError: an unknown layout, an axis size below 1, or axis sizes whose product is not
        the device count (every device trains).
    """
    mesh_cfg = config.get("mesh")
    if mesh_cfg is None:
        return None
    if mesh_cfg.get("layout", "natural") not in layouts.LAYOUTS:
        raise ValueError(f"config.mesh.layout must be one of {layouts.LAYOUTS}, got {mesh_cfg.layout!r}")
    sizes = {axis: mesh_cfg.get(axis, 1) for axis in sharding.MESH_AXES}
    for axis, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"config.mesh.{axis} must be a positive integer, got {size!r}")
    product = int(np.prod(list(sizes.values())))
    if product != jax.device_count():
        described = " x ".join(f"{axis}={size}" for axis, size in sizes.items())
        raise ValueError(
            f"config.mesh {described} = {product} devices, but {jax.device_count()} devices are "
            f"available; the mesh axes' product must equal the device count"
        )
    return sharding.make_mesh(sizes["data"], sizes["sequence"], sizes["tensor"], fsdp=sizes["fsdp"],
                              axis_type=AxisType.Auto)


def check_batch_shape(batch_size: int, seq_len: int, mesh: jax.sharding.Mesh | None,
                      layout: str = "natural") -> None:
    """Raises ValueError unless `[batch_size, seq_len]` batches split evenly over `mesh`.

    The batch is split over `data x fsdp`, the sequence over `sequence` (over
    `2 x sequence` chunks for the zig-zag layout).
    """
    if mesh is None:
        return
    batch_ways = int(np.prod([mesh.shape[a] for a in sharding.mesh_axes_of("batch", mesh)]))
    if batch_size % batch_ways:
        raise ValueError(
            f"data.batch_size {batch_size} is not divisible by mesh data x fsdp = {batch_ways}"
        )
    sequence = int(np.prod([mesh.shape[a] for a in sharding.mesh_axes_of("length", mesh)]))
    multiple = 2 if layout == "zigzag" else 1
    if seq_len % (multiple * sequence):
        what = (f"2 x sequence = {2 * sequence} (zig-zag layout)" if multiple == 2
                else f"sequence = {sequence}")
        raise ValueError(
            f"sequence length {seq_len} is not divisible by the mesh's {what}; "
            f"choose data.seq_len as a multiple of {multiple * sequence}"
        )


def shard_state(state: PyTree, mesh: jax.sharding.Mesh | None) -> PyTree:
    """Places a `TrainState` on `mesh`: params by their logical axes, optimizer moments like them.

    Optimizer-state subtrees shaped like the params (Adam's mu / nu) take the params'
    shardings; everything else (step counters) is replicated.
    """
    if mesh is None:
        return state
    param_shardings = sharding.state_shardings(state.params, mesh)
    params_def = jax.tree.structure(state.params)
    replicated = NamedSharding(mesh, PartitionSpec())

    def like_params(tree) -> bool:
        return jax.tree.structure(tree) == params_def

    def place(tree):
        return jax.device_put(tree, param_shardings if like_params(tree) else replicated)

    params = place(state.params)
    opt_state = jax.tree.map(place, state.opt_state, is_leaf=like_params)
    return state._replace(step=jax.device_put(state.step, replicated), params=params, opt_state=opt_state)


def shard_batch(
    batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh | None, layout: str = "natural"
) -> dict[str, jax.Array] | dict[str, np.ndarray]:
    """Splits `[batch, length]` arrays over (data x fsdp, sequence) after an optional layout permutation.

    Batches without `positions` get the global positions 0 .. length - 1 first, so a
    permuted layout still masks and rotates by true positions. The loss is a mean over
    tokens, so permuting inputs, targets and loss mask alike leaves it unchanged.
    """
    if mesh is None:
        return batch
    if layout != "natural":
        length = np.shape(batch["inputs"])[1]
        if "positions" not in batch:
            batch = {**batch, "positions": np.broadcast_to(np.arange(length, dtype=np.int32),
                                                           np.shape(batch["inputs"]))}
        perm = layouts.layout_permutation(layout, length, dict(mesh.shape)["sequence"])
        batch = {name: layouts.apply_permutation(np.asarray(x), perm) for name, x in batch.items()}
    batch_sharding = sharding.batch_sharding(mesh)
    # Every process holds the same global batch (batches are a function of the step); each
    # builds only its addressable shards, so this also works across hosts.
    return {
        name: jax.make_array_from_callback(np.shape(x), batch_sharding, lambda i, x=x: np.asarray(x)[i])
        for name, x in batch.items()
    }


def on_mesh(step_fn: Callable, mesh: jax.sharding.Mesh | None, layout: str = "natural") -> Callable:
    """`step_fn(state_or_params, batch)` run under `jax.set_mesh(mesh)` on a sharded batch.

    Unchanged when mesh is None. The batch is laid out by `shard_batch`.
    """
    if mesh is None:
        return step_fn

    @functools.wraps(step_fn)
    def wrapped(first, batch):
        with jax.set_mesh(mesh):
            return step_fn(first, shard_batch(batch, mesh, layout))

    return wrapped


def param_specs(params: nnx.State, mesh: jax.sharding.Mesh) -> PyTree:
    """PartitionSpecs of the params on `mesh` (for logs and tests)."""
    return jax.tree.map(lambda s: s.spec, sharding.state_shardings(params, mesh))
