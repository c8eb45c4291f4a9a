"""Device meshes and the one table that maps logical axis names to mesh axes.

Parameters carry logical names (`nnx.Param(x, logical_axes=("embed", "mlp"))`); batches are
`("batch", "length")`. `LOGICAL_AXIS_RULES` says which mesh axes, if any, each name is split
over; a dimension some of whose mesh axes (of size > 1) do not divide it is a `ValueError`.

Mesh axes, outermost first: `data` (batch; parameters replicated, gradients all-reduced),
`fsdp` (batch, with parameters and optimizer state sharded: ZeRO-3 / FSDP), `sequence`
(context parallelism: ring attention), `tensor` (heads / MLP columns).

Every weight carries the `embed` (model-width) axis, and `embed` is split over
`("fsdp", "sequence")`: the devices of a ring hold different tokens of the same rows, whose
gradients are summed over `sequence` anyway, so they share the parameters too (as MaxText's
rules do). Each layer's weights are all-gathered over those axes when used and their
gradients reduce-scattered, so per-device parameter and optimizer memory is
1 / (fsdp x sequence x tensor) of the model's where every sharded dim divides.
"""

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from longctx_jax.typing import PyTree

MESH_AXES = ("data", "fsdp", "sequence", "tensor")

LOGICAL_AXIS_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "length": ("sequence",),
    "vocab": ("tensor",),
    "embed": ("fsdp", "sequence"),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    # Activations: the batch and sequence split like the batch, the model width whole (each
    # layer's weights are gathered instead), logits' vocabulary like the weights'.
    "activation_batch": ("data", "fsdp"),
    "activation_length": ("sequence",),
    "activation_embed": (),
    "activation_vocab": ("tensor",),
}

ACTIVATION_BTD = ("activation_batch", "activation_length", "activation_embed")
ACTIVATION_BTV = ("activation_batch", "activation_length", "activation_vocab")


def make_mesh(
    data: int = 1,
    sequence: int = 1,
    tensor: int = 1,
    *,
    fsdp: int = 1,
    axis_type: jax.sharding.AxisType = jax.sharding.AxisType.Explicit,
) -> jax.sharding.Mesh:
    """A `data x fsdp x sequence x tensor` mesh over the first data*fsdp*sequence*tensor devices."""
    shape = (data, fsdp, sequence, tensor)
    needed = int(np.prod(shape))
    available = jax.device_count()
    if min(shape) < 1 or needed > available:
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} x sequence={sequence} x tensor={tensor} needs {needed} "
            f"devices; {available} are available (sizes must be >= 1)"
        )
    return jax.make_mesh(shape, MESH_AXES, axis_types=(axis_type,) * len(MESH_AXES),
                         devices=jax.devices()[:needed])


def mesh_axes_of(logical_name: str, mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh) -> tuple[str, ...]:
    """The mesh axes of `mesh` that a logical axis is split over (absent axes dropped)."""
    if logical_name not in LOGICAL_AXIS_RULES:
        raise ValueError(f"logical axis {logical_name!r} has no rule; known: {sorted(LOGICAL_AXIS_RULES)}")
    return tuple(a for a in LOGICAL_AXIS_RULES[logical_name] if a in mesh.shape)


def logical_to_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh
) -> PartitionSpec:
    """PartitionSpec for an array with these logical axes on this mesh.

    Each dim is split over its rule's mesh axes of size > 1 that no earlier dim took.

    Raises:
      ValueError: the axes and shape differ in length, a name has no rule, or a dim is not
        divisible by the product of the mesh axes it is split over.
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match array shape {tuple(shape)}")
    spec = []
    used: set[str] = set()
    for name, size in zip(logical_axes, shape, strict=True):
        axes = () if name is None else mesh_axes_of(name, mesh)
        axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
        ways = int(np.prod([mesh.shape[a] for a in axes]))
        if size % ways:
            split = " x ".join(f"{a}={mesh.shape[a]}" for a in axes)
            raise ValueError(
                f"dimension {name!r} of size {size} (array shape {tuple(shape)}) is not divisible by "
                f"its mesh axes {split} = {ways}; choose mesh sizes that divide it"
            )
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: jax.sharding.Mesh) -> PyTree:
    """NamedShardings for every variable of an NNX state, from its `logical_axes` metadata.

    Raises:
      ValueError: a variable's dim is not divisible by its mesh axes (the message names it).
    """

    def sharding_of(path, variable):
        shape = np.shape(variable.get_raw_value())  # an array or an abstract ShapeDtypeStruct
        axes = variable.get_metadata().get("logical_axes") or (None,) * len(shape)
        try:
            return NamedSharding(mesh, logical_to_spec(axes, shape, mesh))
        except ValueError as error:
            raise ValueError(f"parameter {jax.tree_util.keystr(path)}: {error}") from None

    return jax.tree.map_with_path(sharding_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_spec(mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh) -> PartitionSpec:
    """`[batch, length]`: batch over (`data`, `fsdp`), length over `sequence` (those in `mesh`)."""
    def entry(axes: tuple[str, ...]):
        return None if not axes else axes[0] if len(axes) == 1 else axes

    return PartitionSpec(entry(mesh_axes_of("batch", mesh)), entry(mesh_axes_of("length", mesh)))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of `[batch, length]` arrays (`batch_spec`)."""
    return NamedSharding(mesh, batch_spec(mesh))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`x` constrained to its logical axes on the mesh of `jax.set_mesh`, inside a jitted model.

    Without a set mesh, on Explicit mesh axes, or where a dim does not divide evenly (a
    one-token decode step), `x` is returned unconstrained: this pins activations for XLA's
    sharding propagation (e.g. `[B, T, D]` hidden states stay split over the batch and the
    sequence, not over the model width of the fsdp-sharded weights) and never changes results.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.axis_names or any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
        return x
    try:
        spec = logical_to_spec(logical_axes, x.shape, mesh)
    except ValueError:
        return x
    return jax.lax.with_sharding_constraint(x, spec)
