"""Orbax checkpoints: the only module that talks to Orbax.

A `CheckpointManager` keeps the latest `keep` checkpoints (`LatestN` preservation policy)
and saves every `save_every` steps. Orbax writes each step into a temporary directory and
renames it when complete, so an interrupted save never destroys the last good checkpoint.

Resuming is strict: a checkpoint directory that exists but holds no complete, readable
checkpoint raises a `ValueError` instead of silently starting from scratch.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from longctx_jax.typing import PyTree


class Checkpointer:
    """Saves and restores a training-state pytree under `directory`."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, save_every: int = 1000):
        if keep < 1:
            raise ValueError(f"checkpoint keep must be >= 1, got {keep}")
        if save_every < 1:
            raise ValueError(f"checkpoint save_every must be >= 1, got {save_every}")
        self.directory = epath.Path(directory).absolute()
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=False,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None if the directory holds none.

        Raises:
          ValueError: the directory has entries but no complete checkpoint (e.g. only an
            interrupted first save, or a step directory with its files removed).
        """
        step = self._manager.latest_step()
        if step is None:
            leftovers = sorted(p.name for p in self.directory.iterdir()) if self.directory.exists() else []
            if leftovers:
                raise ValueError(
                    f"checkpoint directory {self.directory} contains {leftovers} but no complete "
                    "checkpoint; refusing to start from scratch. Remove the directory (or choose "
                    "another workdir) to train anew."
                )
        return step

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int, state: PyTree) -> None:
        """Writes `state` as checkpoint `step` (atomically) and waits until it is on disk."""
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, abstract_state: PyTree) -> PyTree:
        """Reads checkpoint `step` into the structure, shapes and shardings of `abstract_state`."""
        if step not in self._manager.all_steps():
            raise ValueError(
                f"no checkpoint for step {step} in {self.directory}; "
                f"available steps: {sorted(self._manager.all_steps())}"
            )
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except (FileNotFoundError, ValueError, KeyError, OSError) as err:
            raise ValueError(
                f"checkpoint step {step} in {self.directory} is unreadable or does not match "
                f"the model/optimizer ({type(err).__name__}: {err})"
            ) from err

    def close(self) -> None:
        self._manager.close()


def abstract_like(state: PyTree) -> PyTree:
    """Shape/dtype/sharding structs of a concrete state, for `restore`."""

    def to_struct(x: Any):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(to_struct, state)
