"""Start training from another run's parameters: length fine-tuning and continual pre-training.

`config.train.init_from = "<path>"` makes a fresh run (step 0, fresh optimizer state) begin
from the parameters of a saved checkpoint. The path may be a run directory (its
`checkpoints/` subdirectory is used), an Orbax checkpoint directory (its newest step is used)
or one step directory inside it (`.../checkpoints/600`).

The new model config may differ from the saved one in everything that has no parameters:
position scheme options (`rope_scaling` for Position Interpolation, NTK, YaRN, ...),
`rope_theta`, attention window and sinks, and `data.seq_len`. Every parameter tensor must
exist in the checkpoint with the same shape, else a `ValueError` names the tensor.

A run that already has its own checkpoints resumes from them and ignores `init_from`, so a
preempted fine-tune continues where it stopped instead of restarting from the source run.
"""

import os

import jax
import numpy as np
from flax import nnx

from longctx_jax.train.checkpoint import Checkpointer


def _key_name(key) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def param_name(path) -> str:
    """A tensor's path as "layers/0/attn/wq/value" (the same for nnx.State and a restored dict)."""
    return "/".join(_key_name(k) for k in path)


def resolve_checkpoint(path: str) -> tuple[str, int | None]:
    """The Orbax checkpoint directory and step (None: newest) that `path` designates.

    Raises:
      ValueError: `path` does not exist or holds no checkpoint.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise ValueError(f"train.init_from: {path} does not exist (expected a run directory, its "
                         "checkpoints/ directory or one step directory inside it)")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), None
    name = os.path.basename(path)
    if name.isdigit() and os.path.isdir(os.path.dirname(path)):
        return os.path.dirname(path), int(name)
    return path, None


def load_params(path: str) -> tuple[dict[str, jax.Array], int]:
    """The saved parameters at `path` by tensor name, and the step they come from.

    Raises:
      ValueError: no (complete) checkpoint at `path`.
    """
    directory, step = resolve_checkpoint(path)
    checkpointer = Checkpointer(directory, keep=1, save_every=1)
    try:
        if step is None:
            step = checkpointer.latest_step()
        if step is None:
            raise ValueError(f"train.init_from: no checkpoint in {directory}")
        restored = checkpointer.restore(step, None)
    finally:
        checkpointer.close()
    if not isinstance(restored, dict) or "params" not in restored:
        raise ValueError(f"train.init_from: checkpoint {directory}/{step} holds no 'params' entry")
    flat, _ = jax.tree_util.tree_flatten_with_path(restored["params"])
    return {param_name(p): v for p, v in flat}, step


def init_params_from(params: nnx.State, path: str) -> tuple[nnx.State, int]:
    """`params` (the new model's) with every tensor replaced by the checkpoint's at `path`.

    Args:
      params: the freshly initialised model state (defines names, shapes, dtypes, shardings).
      path: see the module docstring.

    Returns:
      (the loaded parameters, the source checkpoint's step).

    Raises:
      ValueError: missing checkpoint; a tensor of the new model missing from the checkpoint,
        a checkpoint tensor the new model lacks, or a shape mismatch (the message names it).
    """
    saved, step = load_params(path)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [param_name(p) for p, _ in flat]
    missing = [n for n in names if n not in saved]
    extra = sorted(set(saved) - set(names))
    if missing or extra:
        raise ValueError(f"train.init_from {path}: parameters differ; missing from the checkpoint: "
                         f"{missing}; in the checkpoint but not in the model: {extra}")
    leaves = []
    for name, (_, new) in zip(names, flat, strict=True):
        old = saved[name]
        if tuple(old.shape) != tuple(new.shape):
            raise ValueError(f"train.init_from {path}: tensor {name} has shape {tuple(old.shape)} in the "
                             f"checkpoint but {tuple(new.shape)} in the model config")
        value = np.asarray(old).astype(new.dtype)
        leaves.append(jax.device_put(value, new.sharding) if isinstance(new, jax.Array) else value)
    return jax.tree_util.tree_unflatten(treedef, leaves), step
