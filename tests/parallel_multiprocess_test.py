"""Two real processes x 4 CPU devices: ring-attention training, an Orbax checkpoint, a kill, a resume.

Each phase starts two `tests.multiprocess_worker` processes joined by
`jax.distributed.initialize` on localhost; together they hold the 8 devices of one
(2 data x 4 sequence) mesh, so every ring hop and gradient all-reduce crosses processes.
Phase 1 trains 3 steps (checkpoint at step 2, written by both processes) and is killed
with SIGKILL; phase 2 resumes from step 2 and trains to step 6. The result must match one
process on 8 devices training the same 6 steps without interruption.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

from tests import multiprocess_worker as worker

STEPS, STOP_AT, PROCESSES = 6, 3, 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 900  # both phases; about 3.5 minutes on an idle 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir: str, stop_at: int | None) -> list[subprocess.Popen]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": REPO}
    coordinator = f"127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "tests.multiprocess_worker", "--workdir", workdir, "--steps", str(STEPS),
               "--coordinator", coordinator, "--num_processes", str(PROCESSES)]
    if stop_at is not None:
        command += ["--stop_at", str(stop_at)]
    return [
        subprocess.Popen(command + ["--process_id", str(i)], cwd=REPO, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(PROCESSES)
    ]


def _read_until(proc: subprocess.Popen, marker: str, deadline: float) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith(marker) or time.monotonic() > deadline:
            break
    return lines


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_two_processes_checkpoint_kill_resume_match_one_process(tmp_path):
    workdir = str(tmp_path / "run")
    deadline = time.monotonic() + TIMEOUT_S
    phase1 = _start(workdir, STOP_AT)
    try:
        logs = [_read_until(p, "READY", deadline) for p in phase1]
        for i, log in enumerate(logs):
            lines = "\n".join(log)
            assert log and log[-1] == f"READY {STOP_AT}", f"process {i} stopped early:\n{lines}"
            assert f"process {i} of 2: 4 local, 8 global devices" in log
    finally:
        _kill(phase1)
    assert all(p.returncode == -signal.SIGKILL for p in phase1)
    saved = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    assert saved == ["2"], saved  # step 3 was trained but never saved: the kill lost it

    phase2 = _start(workdir, None)
    try:
        outputs = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for p in phase2]
    finally:
        _kill(phase2)
    for i, (proc, out) in enumerate(zip(phase2, outputs, strict=True)):
        assert proc.returncode == 0, f"process {i} failed:\n{out}"
        assert f"ran steps 2..{STEPS}" in out, out
    got = np.load(os.path.join(workdir, "result.npz"))

    want = worker.run(str(tmp_path / "reference"), STEPS)  # this process: 8 devices, no kill
    assert want["start"] == 0 and int(got["start"]) == 2
    chex.assert_trees_all_close(got["losses"], np.asarray(want["losses"][2:]), atol=1e-5, rtol=1e-5)
    params = [got[f"arr_{i}"] for i in range(len(want["params"]))]
    chex.assert_trees_all_close(params, want["params"], atol=1e-5, rtol=1e-5)
