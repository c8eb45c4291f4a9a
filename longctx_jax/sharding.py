"""Device meshes and the one table that maps logical axis names to mesh axes.

Parameters carry logical names (`nnx.Param(x, logical_axes=("embed", "mlp"))`); batches are
`("batch", "length")`. `LOGICAL_AXIS_RULES` says which mesh axis, if any, each name is split
over. A dimension whose size the mesh axis does not divide stays replicated.

Mesh axes: `data` (batch), `sequence` (context parallelism: ring attention), `tensor`
(heads / MLP columns).
"""

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from longctx_jax.typing import PyTree

MESH_AXES = ("data", "sequence", "tensor")

LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "batch": "data",
    "length": "sequence",
    "vocab": "tensor",
    "embed": None,
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
}


def make_mesh(
    data: int = 1,
    sequence: int = 1,
    tensor: int = 1,
    *,
    axis_type: jax.sharding.AxisType = jax.sharding.AxisType.Explicit,
) -> jax.sharding.Mesh:
    """A `data x sequence x tensor` mesh over the first data*sequence*tensor devices."""
    shape = (data, sequence, tensor)
    needed = int(np.prod(shape))
    available = jax.device_count()
    if min(shape) < 1 or needed > available:
        raise ValueError(
            f"mesh data={data} x sequence={sequence} x tensor={tensor} needs {needed} devices; "
            f"{available} are available (sizes must be >= 1)"
        )
    return jax.make_mesh(shape, MESH_AXES, axis_types=(axis_type,) * 3,
                         devices=jax.devices()[:needed])


def logical_to_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh
) -> PartitionSpec:
    """PartitionSpec for an array with these logical axes on this mesh."""
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match array shape {tuple(shape)}")
    spec = []
    used = set()
    for name, size in zip(logical_axes, shape, strict=True):
        if name is not None and name not in LOGICAL_AXIS_RULES:
            raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(LOGICAL_AXIS_RULES)}")
        mesh_axis = LOGICAL_AXIS_RULES.get(name) if name is not None else None
        if (mesh_axis is None or mesh_axis not in mesh.shape or mesh_axis in used
                or mesh.shape[mesh_axis] == 1 or size % mesh.shape[mesh_axis]):
            spec.append(None)
        else:
            spec.append(mesh_axis)
            used.add(mesh_axis)
    return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: jax.sharding.Mesh) -> PyTree:
    """NamedShardings for every variable of an NNX state, from its `logical_axes` metadata."""

    def sharding_of(variable):
        axes = variable.get_metadata().get("logical_axes") or (None,) * np.ndim(variable[...])
        return NamedSharding(mesh, logical_to_spec(axes, np.shape(variable[...]), mesh))

    return jax.tree.map(sharding_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of `[batch, length]` arrays: batch over `data`, length over `sequence`."""
    return NamedSharding(mesh, PartitionSpec(LOGICAL_AXIS_RULES["batch"], LOGICAL_AXIS_RULES["length"]))
