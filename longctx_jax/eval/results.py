"""A resumable JSON results file: sections of records, one record per finished sweep cell.

    {"model": ..., "train_length": ..., "perplexity": [{"method", "length", ...}, ...],
     "passkey": [{"method", "length", "depth", "accuracy", ...}], ...}

Every sweep asks `has(section, **key)` before running a cell and `add(section, record)` after,
and `add` rewrites the file atomically (temporary file + `os.replace`), so a sweep killed at
any point resumes from its last finished cell when started again on the same file.
"""

import json
import os
from collections.abc import Mapping
from typing import Any


class ResultStore:
    """Results JSON at `path`, loaded if it exists.

    Args:
      path: the JSON file (created on the first `add` or `update_meta`).
      meta: top-level scalar fields (model name, train length, ...) merged into the file.
    """

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None):
        self.path = os.fspath(path)
        self.data: dict[str, Any] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.data = json.load(f)
        if meta:
            self.update_meta(meta)

    def update_meta(self, meta: Mapping[str, Any]) -> None:
        """Sets top-level fields and writes the file."""
        self.data.update(meta)
        self._write()

    def records(self, section: str) -> list[dict[str, Any]]:
        """The records of one section (empty if none)."""
        return list(self.data.get(section, []))

    def has(self, section: str, **key: Any) -> bool:
        """Whether a record whose fields include `key` exists in `section`."""
        return any(all(r.get(k) == v for k, v in key.items()) for r in self.data.get(section, []))

    def add(self, section: str, record: Mapping[str, Any]) -> None:
        """Appends one record and writes the file atomically."""
        self.data.setdefault(section, []).append(dict(record))
        self._write()

    def _write(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)
