"""One process of the 2-process training test (tests/parallel_multiprocess_test.py).

    python -m tests.multiprocess_worker --workdir DIR --steps 6 --stop_at 3 \
        --coordinator 127.0.0.1:PORT --num_processes 2 --process_id 0

Trains the tiny ring-attention decoder on a (2 data x 4 sequence) mesh, zig-zag layout,
checkpointing with Orbax every `SAVE_EVERY` steps and resuming from the newest checkpoint
in `--workdir`. With `--stop_at` below `--steps` it prints `READY <step>` after that step
and waits to be killed; otherwise it writes the final parameters and the per-step losses
of the steps it ran (process 0, `result.npz` in the workdir). `run()` is also called
in-process, on one process's 8 devices, for the reference run.
"""

import argparse
import os
import sys
import time

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from configs import tiny
from longctx_jax.parallel import distributed
from longctx_jax.train.checkpoint import Checkpointer, abstract_like
from longctx_jax.train.optimizer import make_optimizer
from longctx_jax.train.step import init_train_state, make_train_step
from longctx_jax.train.trainer import decoder_from_config

BATCH, LENGTH, VOCAB = 4, 64, 64
SAVE_EVERY = 2


def make_config(steps: int) -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.model.vocab_size = VOCAB
    config.model.d_model = 32
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.mlp_dim = 64
    config.model.attention.impl = "ring"
    config.optim.warmup_steps = 0
    config.train.steps = steps
    config.mesh = distributed.default_mesh_config()
    config.mesh.data, config.mesh.sequence, config.mesh.layout = 2, 4, "zigzag"
    return config


def batch_at(step: int) -> dict[str, np.ndarray]:
    """Step `step`'s batch, the same in every process: two packed documents per row."""
    rng = np.random.default_rng(1000 + step)
    tokens = rng.integers(0, VOCAB, size=(BATCH, LENGTH + 1))
    cut = int(rng.integers(8, LENGTH - 8))
    positions = np.concatenate([np.arange(cut), np.arange(LENGTH - cut)])
    loss_mask = np.ones((BATCH, LENGTH), np.int32)
    loss_mask[:, cut - 1] = 0
    return {
        "inputs": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "positions": np.broadcast_to(positions, (BATCH, LENGTH)).astype(np.int32),
        "segment_ids": np.broadcast_to(np.repeat([1, 2], [cut, LENGTH - cut]), (BATCH, LENGTH)).astype(
            np.int32),
        "loss_mask": loss_mask,
    }


def run(workdir: str, steps: int, stop_at: int | None = None) -> dict:
    """Trains (resuming from `workdir/checkpoints`) up to `stop_at` or `steps`.

    Returns `{"start": first step run, "losses": [...], "params": flat leaves}` with the
    parameters gathered to every process.
    """
    config = make_config(steps)
    mesh = distributed.mesh_from_config(config)
    graphdef, params = nnx.split(decoder_from_config(config, VOCAB))
    tx = make_optimizer(config.optim, steps)
    state = distributed.shard_state(init_train_state(params, tx), mesh)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=2, save_every=SAVE_EVERY)
    latest = checkpointer.latest_step()
    if latest is not None:
        state = checkpointer.restore(latest, abstract_like(state))
    train_step = make_train_step(graphdef, tx, use_segment_ids=True)
    step_fn = distributed.on_mesh(train_step, mesh, config.mesh.layout)
    start = int(state.step)
    losses = []
    for step in range(start, steps if stop_at is None else stop_at):
        state, metrics = step_fn(state, batch_at(step))
        losses.append(float(metrics["train_loss"]))
        if checkpointer.should_save(step + 1):
            checkpointer.save(step + 1, state)
    checkpointer.close()
    leaves = multihost_utils.process_allgather(jax.tree.leaves(state.params), tiled=True)
    return {"start": start, "losses": losses, "params": [np.asarray(x) for x in leaves]}


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("workdir", "coordinator"):
        parser.add_argument(f"--{name}", required=True)
    for name in ("steps", "num_processes", "process_id"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--stop_at", type=int, default=None)
    args = parser.parse_args()
    config = ml_collections.ConfigDict({"mesh": distributed.default_mesh_config()})
    config.mesh.distributed = True
    config.mesh.coordinator_address = args.coordinator
    config.mesh.num_processes = args.num_processes
    config.mesh.process_id = args.process_id
    distributed.initialize(config)
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local, "
          f"{jax.device_count()} global devices", flush=True)
    result = run(args.workdir, args.steps, args.stop_at)
    print(f"ran steps {result['start']}..{result['start'] + len(result['losses'])}", flush=True)
    if args.stop_at is not None and args.stop_at < args.steps:
        print(f"READY {args.stop_at}", flush=True)
        time.sleep(600)  # holds the distributed runtime until the test kills this process
        sys.exit(1)
    if jax.process_index() == 0:
        np.savez(os.path.join(args.workdir, "result.npz"), *result["params"],
                 start=result["start"], losses=np.asarray(result["losses"]))


if __name__ == "__main__":
    main()
