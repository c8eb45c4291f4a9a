"""Metrics to a JSONL file and TensorBoard event files in the run directory.

Resuming rolls the records back to the resumed step (see `MetricsWriter`), so each step
appears once in `metrics.jsonl` and in TensorBoard however often the run was interrupted.
"""

import json
import os
import resource
import sys
import time
from typing import Any

import jax
from tensorboardX import SummaryWriter

from longctx_jax.atomic import write_atomically


def peak_memory_gib() -> dict[str, float]:
    """Peak memory of this process so far, in GiB: `peak_host_gib` (resident set size, which on a
    CPU backend holds every array) and, where the backend reports it, `peak_device_gib` (the
    largest `peak_bytes_in_use` over local devices)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_host_gib": rss / (2.0**30 if sys.platform == "darwin" else 2.0**20)}
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()
             if d.platform != "cpu"]
    peaks = [p for p in peaks if p is not None]
    if peaks:
        out["peak_device_gib"] = max(peaks) / 2.0**30
    return out


class MetricsWriter:
    """Appends one JSON object per call to `metrics.jsonl` and mirrors scalars to TensorBoard.

    Args:
      workdir: the run directory.
      resume_step: the step the run resumes from. Records of later steps, written by a process
        that died before checkpointing them, are removed from `metrics.jsonl` (rewritten
        atomically) and purged from TensorBoard (a `purge_step` session marker), so the
        rerun's records replace them instead of appearing twice.
    """

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int = 0):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        rolled_back = _truncate_after(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across steps
        tensorboard = os.path.join(workdir, "tensorboard")
        purge = resume_step + 1 if rolled_back or os.path.isdir(tensorboard) else None
        # tensorboardX names event files by the second: a unique suffix keeps a quick restart
        # from truncating the previous file, and sorts the files in the order they were written.
        self._tensorboard = SummaryWriter(logdir=tensorboard, purge_step=purge,
                                          filename_suffix=f".{time.time_ns()}")

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in record.items():
            if name != "step":
                self._tensorboard.add_scalar(name, value, global_step=int(step))

    def close(self) -> None:
        self._file.close()
        self._tensorboard.close()


def _truncate_after(path: str, step: int) -> int:
    """Drops the records of steps > `step` from a JSONL metrics file; returns how many."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = []
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) - 1:  # the last line of a killed writer: drop it
                continue
            raise ValueError(f"{path} line {number + 1} is not JSON: {line[:200]!r}") from None
        if int(record["step"]) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines):
        write_atomically(path, "".join(kept))
    return len(lines) - len(kept)


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run's `metrics.jsonl`."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
