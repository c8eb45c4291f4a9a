"""Metrics to a JSONL file and TensorBoard event files in the run directory."""

import json
import os
from typing import Any

from tensorboardX import SummaryWriter


class MetricsWriter:
    """Appends one JSON object per call to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str | os.PathLike):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across steps
        self._tensorboard = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))

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


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run's `metrics.jsonl`."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
