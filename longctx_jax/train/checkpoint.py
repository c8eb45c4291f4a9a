"""Orbax checkpoints: the only module that talks to Orbax.

A `CheckpointManager` keeps the latest `keep` checkpoints (`LatestN` preservation policy)
and saves every `save_every` steps.

Fault model (each case has a test in tests/train_faults_test.py):
- Interrupted save (SIGKILL, preemption): Orbax writes step N into `N.orbax-checkpoint-tmp`
  and renames it to `N` only after every array and the commit file are written, so a killed
  save leaves the previous checkpoint as the newest; the leftover is removed by the next save
  of step N.
- Failed save (disk full, I/O error): `save` removes the partial step and raises an `OSError`
  naming the step, the directory and the newest checkpoint a rerun will resume from.
- Unreadable newest checkpoint (a truncated array file, a crash that lost unsynced data):
  `restore_latest` tries the steps newest first, logs each step it skips and why, renames the
  skipped ones to `N.unreadable` (kept for inspection, ignored by Orbax) and resumes from the
  newest step that restores.
- Nothing restores (a different model, every step damaged): a `ValueError` naming each step
  and its error, never a silent start from scratch; likewise a directory whose entries hold no
  complete checkpoint.
"""

import errno
import logging
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from longctx_jax.typing import PyTree

TMP_MARKER = ".orbax-checkpoint-tmp"
UNREADABLE_SUFFIX = ".unreadable"
_LOG = logging.getLogger(__name__)


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

    def _leftovers(self, step: int) -> list[epath.Path]:
        if not self.directory.exists():
            return []
        return [p for p in self.directory.iterdir() if p.name.startswith(f"{step}{TMP_MARKER}")]

    def _remove_partial(self, step: int, attempts: int = 50) -> None:
        """Removes the temporary directory of a failed save of `step`.

        Orbax's writer threads may still be finishing (and failing) when the error reaches
        us, so this waits for them and retries until the directory stays gone.
        """
        try:
            self._manager.wait_until_finished()
        except Exception:  # noqa: BLE001 - the save already failed; its error is the one raised
            pass
        for _ in range(attempts):
            leftovers = self._leftovers(step)
            if not leftovers:
                return
            for leftover in leftovers:
                shutil.rmtree(leftover, ignore_errors=True)
            time.sleep(0.05)
        _LOG.warning("could not remove %s after a failed save", self._leftovers(step))

    def save(self, step: int, state: PyTree) -> None:
        """Writes `state` as checkpoint `step` (atomically) and waits until it is on disk.

        Raises:
          OSError: the save failed (e.g. ENOSPC); the partial step was removed and the
            previous checkpoints are untouched.
        """
        for leftover in self._leftovers(step):  # an earlier save of this step was interrupted
            _LOG.warning("removing %s, left by an interrupted save of step %d", leftover, step)
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
            self._manager.wait_until_finished()
        except OSError as err:
            self._remove_partial(step)
            self._manager.reload()
            raise OSError(
                err.errno or errno.EIO,
                f"saving checkpoint step {step} to {self.directory} failed "
                f"({os.strerror(err.errno) if err.errno else err}); the partial step was removed and a "
                f"rerun resumes from step {self._manager.latest_step()}",
            ) from err

    def restore_latest(self, abstract_state: PyTree) -> tuple[int | None, PyTree | None]:
        """Restores the newest checkpoint that reads back, skipping (and setting aside) broken ones.

        Args:
          abstract_state: the structure, shapes, dtypes and shardings to restore into.

        Returns:
          (step, state), or (None, None) when the directory holds no checkpoint at all.

        Raises:
          ValueError: checkpoints exist but none restores (each step's error is named), or
            the directory holds only incomplete saves (see `latest_step`).
        """
        if self.latest_step() is None:
            return None, None
        errors: list[tuple[int, BaseException]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except MemoryError:  # a resource problem, not a damaged checkpoint: never fall back
                raise
            except Exception as err:  # noqa: BLE001 - Orbax/TensorStore raise bare Exception
                _LOG.warning("checkpoint step %d in %s does not restore, trying an older one: %s: %s",
                             step, self.directory, type(err).__name__, _first_line(err))
                errors.append((step, err))
                continue
            for bad, err in errors:
                aside = self.directory / f"{bad}{UNREADABLE_SUFFIX}"
                if aside.exists():
                    aside = self.directory / f"{bad}{UNREADABLE_SUFFIX}-{time.time_ns()}"
                (self.directory / str(bad)).rename(aside)
                _LOG.warning("skipped checkpoint step %d (%s: %s); moved it to %s and resumed from step %d",
                             bad, type(err).__name__, _first_line(err), aside, step)
            if errors:
                self._manager.reload()
            return step, state
        details = "; ".join(f"step {s}: {type(e).__name__}: {_first_line(e)}" for s, e in errors)
        raise ValueError(
            f"no checkpoint in {self.directory} restores into this model/optimizer ({details}). "
            "If the config changed, use another workdir; if the files are damaged, remove them."
        )

    def restore(self, step: int, abstract_state: PyTree) -> PyTree:
        """Reads checkpoint `step` into the structure, shapes and shardings of `abstract_state`."""
        if step not in self._manager.all_steps():
            raise ValueError(
                f"no checkpoint for step {step} in {self.directory}; "
                f"available steps: {sorted(self._manager.all_steps())}"
            )
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as err:  # noqa: BLE001 - Orbax/TensorStore raise bare Exception
            raise ValueError(
                f"checkpoint step {step} in {self.directory} is unreadable or does not match "
                f"the model/optimizer ({type(err).__name__}: {err})"
            ) from err

    def close(self) -> None:
        self._manager.close()


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:limit]


def abstract_like(state: PyTree) -> PyTree:
    """Shape/dtype/sharding structs of a concrete state, for `restore`."""

    def to_struct(x: Any):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(to_struct, state)
