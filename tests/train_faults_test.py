"""Fault injection: each fault ends with nothing lost and the next run correct.

Checkpoints: a save killed with SIGKILL (a subprocess, stopped inside Orbax's save), a
truncated array file in the newest checkpoint, a full disk (ENOSPC raised inside Orbax's
writer). Run records: a failed invocation on a finished run, metrics of rolled-back steps
(metrics.jsonl and TensorBoard). Evaluation: a sweep interrupted by KeyboardInterrupt, a full
disk while writing results.json. The end-to-end trainer case is `slow`.
"""

import errno
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.path import async_path
from tensorboardX.proto import event_pb2

from configs import tiny
from longctx_jax import atomic
from longctx_jax.data.tokenizers import ByteTokenizer
from longctx_jax.eval.passkey import passkey_sweep
from longctx_jax.eval.perplexity import perplexity_sweep
from longctx_jax.eval.results import ResultStore
from longctx_jax.train.checkpoint import Checkpointer
from longctx_jax.train.metrics import MetricsWriter, read_metrics
from longctx_jax.train.trainer import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = ByteTokenizer()


def state_at(step: int) -> dict[str, jax.Array]:
    """A state whose array data does not compress away (so truncating its file damages it)."""
    return {"w": jnp.sin(jnp.arange(4096.0) * (step + 1)).reshape(64, 64), "b": jnp.full((3,), float(step))}


def saved_checkpointer(directory, steps=(1, 2)) -> Checkpointer:
    checkpointer = Checkpointer(directory, keep=3, save_every=1)
    for step in steps:
        checkpointer.save(step, state_at(step))
    return checkpointer


KILLED_SAVE = textwrap.dedent("""
    import sys, time
    from orbax.checkpoint._src.path import async_path
    from longctx_jax.train.checkpoint import Checkpointer
    from tests.train_faults_test import state_at

    hook = sys.argv[2]
    original = getattr(async_path, hook)

    async def stop_inside_save(*args, **kwargs):
        if any("2.orbax-checkpoint-tmp" in str(a) for a in args):
            print("INSIDE_SAVE", flush=True)
            time.sleep(600)
        return await original(*args, **kwargs)

    setattr(async_path, hook, stop_inside_save)
    checkpointer = Checkpointer(sys.argv[1], keep=3, save_every=1)
    checkpointer.save(1, state_at(1))
    checkpointer.save(2, state_at(2))
    print("SAVE_FINISHED", flush=True)
""")


@pytest.mark.parametrize("hook", ["write_text", "rename"])  # while writing arrays' metadata; at commit
def test_save_killed_midway_leaves_previous_checkpoint_latest(tmp_path, hook):
    directory = tmp_path / "ckpt"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(directory), hook], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "INSIDE_SAVE", f"the save of step 2 never reached {hook}: {line!r}"
        child.kill()  # SIGKILL
    finally:
        child.wait(timeout=60)
    names = sorted(os.listdir(directory))
    assert "1" in names and "2" not in names and any(n.startswith("2.orbax-checkpoint-tmp") for n in names)
    checkpointer = Checkpointer(directory, keep=3, save_every=1)
    step, state = checkpointer.restore_latest(state_at(0))
    assert step == 1
    chex.assert_trees_all_equal(state, state_at(1))
    checkpointer.save(2, state_at(2))  # the next run saves the same step over the leftover
    assert sorted(os.listdir(directory)) == ["1", "2"]
    step, state = Checkpointer(directory, keep=3, save_every=1).restore_latest(state_at(0))
    assert step == 2
    chex.assert_trees_all_equal(state, state_at(2))


def truncate_largest_array_file(step_dir) -> str:
    """Cuts the largest array data file (under ocdbt.process_0/d) of a checkpoint to half."""
    files = [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names
             if root.endswith(os.path.join("ocdbt.process_0", "d"))]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)
    return largest


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    directory = tmp_path / "ckpt"
    saved_checkpointer(directory)
    truncate_largest_array_file(directory / "2")
    checkpointer = Checkpointer(directory, keep=3, save_every=1)
    with caplog.at_level(logging.WARNING, logger="longctx_jax.train.checkpoint"):
        step, state = checkpointer.restore_latest(state_at(0))
    assert step == 1
    chex.assert_trees_all_equal(state, state_at(1))
    assert "skipped checkpoint step 2" in caplog.text and "resumed from step 1" in caplog.text
    assert sorted(os.listdir(directory)) == ["1", "2.unreadable"]  # kept for inspection
    checkpointer.save(2, state_at(2))
    step, state = Checkpointer(directory, keep=3, save_every=1).restore_latest(state_at(0))
    assert step == 2
    chex.assert_trees_all_equal(state, state_at(2))


def test_no_restorable_checkpoint_names_every_step(tmp_path):
    directory = tmp_path / "ckpt"
    saved_checkpointer(directory)
    wrong_model = {"w": jnp.zeros((5, 5)), "b": jnp.zeros((3,))}  # another model's shapes
    with pytest.raises(ValueError, match=r"no checkpoint .* restores.*step 2: .*step 1: "):
        Checkpointer(directory, keep=3, save_every=1).restore_latest(wrong_model)
    assert sorted(os.listdir(directory)) == ["1", "2"]  # nothing set aside when nothing restores


def test_disk_full_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    checkpointer = saved_checkpointer(directory, steps=(1,))
    original = async_path.write_text

    async def disk_full(path, *args, **kwargs):
        if "2.orbax-checkpoint-tmp" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return await original(path, *args, **kwargs)

    monkeypatch.setattr(async_path, "write_text", disk_full)
    with pytest.raises(OSError, match=r"checkpoint step 2 .*No space left.*resumes from step 1") as info:
        checkpointer.save(2, state_at(2))
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(directory)) == ["1"]  # the partial step is gone
    monkeypatch.setattr(async_path, "write_text", original)
    step, state = Checkpointer(directory, keep=3, save_every=1).restore_latest(state_at(0))
    assert step == 1
    chex.assert_trees_all_equal(state, state_at(1))
    checkpointer.save(2, state_at(2))
    assert Checkpointer(directory, keep=3, save_every=1).restore_latest(state_at(0))[0] == 2


def test_failed_invocation_keeps_the_finished_runs_config(tmp_path):
    config = tiny.get_config()
    finished = '{"train": {"steps": 400}}\n'
    (tmp_path / "config.json").write_text(finished)
    config.train.steps = 0
    with pytest.raises(ValueError, match="config.train.steps must be a positive integer, got 0"):
        train_and_evaluate(config, str(tmp_path))
    assert (tmp_path / "config.json").read_text() == finished
    assert sorted(os.listdir(tmp_path)) == ["config.json"]
    not_a_dir = tmp_path / "config.json"
    with pytest.raises(ValueError, match="is a file, not a directory"):
        train_and_evaluate(tiny.get_config(), str(not_a_dir))


def read_tensorboard(logdir) -> dict[str, dict[int, float]]:
    """Scalars as TensorBoard shows them: event files in order; a SessionLog START at step s
    discards every event loaded so far with step >= s (TensorBoard's restart purge)."""
    events = []
    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 16 + length
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                events = [e for e in events if e[0] < event.step]
            for value in event.summary.value:
                events.append((event.step, value.tag, value.simple_value))
    scalars: dict[str, dict[int, float]] = {}
    for step, tag, value in events:
        assert step not in scalars.setdefault(tag, {}), f"{tag} at step {step} shown twice"
        scalars[tag][step] = value
    return scalars


def test_metrics_of_rolled_back_steps_are_replaced(tmp_path):
    writer = MetricsWriter(tmp_path)
    for step in (2, 4, 6):  # the process dies after logging 6 but with checkpoint 3 the newest
        writer.write(step, {"train_loss": 10.0 + step})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "train_lo')  # a record cut short by the kill
    writer = MetricsWriter(tmp_path, resume_step=3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [2]
    for step in (4, 6):
        writer.write(step, {"train_loss": 20.0 + step})
    writer.close()
    assert [(r["step"], r["train_loss"]) for r in read_metrics(tmp_path)] == [(2, 12.0), (4, 24.0), (6, 26.0)]
    assert read_tensorboard(tmp_path / "tensorboard") == {"train_loss": {2: 12.0, 4: 24.0, 6: 26.0}}


def test_interrupted_sweep_resumes_to_the_uninterrupted_result(tmp_path):
    def model(tokens_BT, positions_BT):  # a causal stand-in: logits from the current token
        return jax.nn.one_hot((tokens_BT * 7 + 3) % TOK.vocab_size, TOK.vocab_size) * 2.0

    calls = {"n": 0}

    def interrupted(tokens_BT, positions_BT):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return model(tokens_BT, positions_BT)

    def sweep(fn, path):
        store = ResultStore(path, inputs={"model": "stand-in"})
        perplexity_sweep(fn, TOK, store, method="none", lengths=[64, 128], share_prefix=False, progress=False)
        passkey_sweep(fn, TOK, store, method="none", lengths=[512], depths=[0.0, 0.5, 1.0], trials=1,
                      progress=False)

    sweep(model, tmp_path / "straight.json")
    with pytest.raises(KeyboardInterrupt):
        sweep(interrupted, tmp_path / "resumed.json")
    partial = json.loads((tmp_path / "resumed.json").read_text())
    assert len(partial["perplexity"]) == 2 and len(partial.get("passkey", [])) == 0
    sweep(model, tmp_path / "resumed.json")
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed == json.loads((tmp_path / "straight.json").read_text())
    assert sorted(os.listdir(tmp_path)) == ["resumed.json", "straight.json"]


def test_disk_full_while_writing_results_keeps_the_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    store = ResultStore(path)
    store.add("passkey", {"method": "none", "length": 512, "depth": 0.0, "accuracy": 1.0})
    before = path.read_text()

    def disk_full(fd):  # delayed allocation: a full disk shows when the data is flushed
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.add("passkey", {"method": "none", "length": 512, "depth": 1.0, "accuracy": 0.0})
    monkeypatch.undo()
    assert path.read_text() == before and sorted(os.listdir(tmp_path)) == ["results.json"]
    assert ResultStore(path).records("passkey") == json.loads(before)["passkey"]


def small_config(steps: int = 6):
    config = tiny.get_config()
    config.model.d_model, config.model.num_layers, config.model.mlp_dim = 32, 1, 64
    config.data.seq_len, config.data.batch_size, config.data.eval_sequences = 32, 4, 8
    config.optim.warmup_steps = 1
    config.train.steps, config.train.log_every, config.train.eval_every = steps, 2, 3
    config.train.checkpoint_every = 3
    return config


@pytest.mark.slow
def test_training_survives_a_corrupt_newest_checkpoint_and_a_lost_tail(tmp_path):
    """Run 1 dies at step 5 (metrics of 4 logged, checkpoint 3 the newest); run 2 finishes;
    the newest checkpoint (6) is then truncated and run 3 redoes 4..6 from checkpoint 3.
    Every run ends bit-identical to a straight run, each step logged once."""
    config = small_config()
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    workdir = str(tmp_path / "faulty")
    train_and_evaluate(config, workdir, stop_at_step=5)
    assert [r["step"] for r in read_metrics(workdir)] == [2, 3, 4]
    resumed = train_and_evaluate(config, workdir)
    truncate_largest_array_file(os.path.join(workdir, "checkpoints", "6"))
    shutil.copy(os.path.join(workdir, "metrics.jsonl"), tmp_path / "metrics_before.jsonl")
    redone = train_and_evaluate(config, workdir)
    for run in (resumed, redone):
        chex.assert_trees_all_equal(jax.device_get(straight["state"].params),
                                    jax.device_get(run["state"].params))
    want = [(r["step"], r["train_loss"], r.get("val_bpb")) for r in read_metrics(tmp_path / "straight")]
    got = [(r["step"], r["train_loss"], r.get("val_bpb")) for r in read_metrics(workdir)]
    assert [s for s, *_ in got] == [2, 3, 4, 6]
    np.testing.assert_allclose(np.array([g[1:] for g in got], float), np.array([w[1:] for w in want], float),
                               rtol=1e-6)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6", "6.unreadable"]
    shown = read_tensorboard(os.path.join(workdir, "tensorboard"))
    assert sorted(shown["train_loss"]) == [2, 3, 4, 6]
