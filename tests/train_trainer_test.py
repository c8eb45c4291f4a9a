"""Training loop: learning, metrics names, bit-exact resume, strict checkpoint errors, overrides."""

import json
import os
import shutil
import subprocess
import sys

import chex
import jax
import ml_collections
import numpy as np
import pytest

from configs import tiny
from longctx_jax.train.checkpoint import Checkpointer
from longctx_jax.train.trainer import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(steps: int = 6) -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.model.d_model = 32
    config.model.num_layers = 1
    config.model.mlp_dim = 64
    config.data.seq_len = 32
    config.data.batch_size = 4
    config.data.eval_sequences = 8
    config.optim.warmup_steps = 1
    config.train.steps = steps
    config.train.log_every = 2
    config.train.eval_every = 3
    config.train.checkpoint_every = 3
    return config


def test_run_writes_metrics_checkpoints_and_summary(tmp_path):
    config = small_config()
    summary = train_and_evaluate(config, str(tmp_path))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    evals = [r for r in records if "val_bpb" in r]
    assert [r["step"] for r in evals] == [3, 6]
    for record in evals:
        assert {"step", "train_loss", "val_loss", "val_bpb"} <= set(record)
        assert np.isfinite(record["val_bpb"])
    assert summary["final_val_bpb"] == evals[-1]["val_bpb"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
    assert os.listdir(tmp_path / "tensorboard")
    assert json.load(open(tmp_path / "summary.json"))["steps"] == 6
    # Initial loss near ln(vocab): a sane initialisation.
    assert records[0]["train_loss"] < 1.5 * np.log(259)


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    config = small_config()
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    train_and_evaluate(config, str(tmp_path / "resumed"), stop_at_step=3)
    resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
    assert int(resumed["state"].step) == 6
    chex.assert_trees_all_equal(jax.device_get(straight["state"].params),
                                jax.device_get(resumed["state"].params))
    chex.assert_trees_all_equal(jax.device_get(straight["state"].opt_state),
                                jax.device_get(resumed["state"].opt_state))


def test_checkpoint_dir_without_complete_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    config = small_config()
    train_and_evaluate(config, str(tmp_path), stop_at_step=3)
    shutil.rmtree(tmp_path / "checkpoints" / "3")
    os.makedirs(tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-123")
    with pytest.raises(ValueError, match="no complete checkpoint"):
        train_and_evaluate(config, str(tmp_path))


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    config = small_config()
    train_and_evaluate(config, str(tmp_path), stop_at_step=3)
    for root, _, files in os.walk(tmp_path / "checkpoints" / "3"):
        for name in files:
            if name != "_CHECKPOINT_METADATA":
                os.remove(os.path.join(root, name))
    with pytest.raises(ValueError, match="checkpoint"):
        train_and_evaluate(config, str(tmp_path))


def test_checkpointer_rejects_missing_step(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=1, save_every=1)
    checkpointer.save(1, {"w": np.zeros(3)})
    with pytest.raises(ValueError, match="no checkpoint for step 7"):
        checkpointer.restore(7, {"w": np.zeros(3)})


def test_mismatched_validation_size_is_a_clear_error(tmp_path):
    config = small_config()
    config.data.eval_sequences = 2
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_and_evaluate(config, str(tmp_path))


def test_command_line_overrides_reach_the_run(tmp_path):
    workdir = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config", "configs/tiny.py:alibi",
         f"--config.workdir={workdir}", "--config.train.steps=2", "--config.optim.warmup_steps=1",
         "--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.mlp_dim=64",
         "--config.data.seq_len=16", "--config.data.batch_size=2", "--config.data.eval_sequences=4"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.load(open(workdir / "config.json"))
    assert saved["model"]["position"] == "alibi"
    assert saved["model"]["num_layers"] == 1 and saved["train"]["steps"] == 2
    assert "final_val_bpb" in result.stdout
