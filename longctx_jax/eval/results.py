"""A resumable JSON results file whose rows are keyed by every input that changes them.

    {"model": ..., "train_length": ...,                       # descriptive metadata
     "inputs": {"model_sha256": ..., "target_length": ..., "protocol_version": ...},
     "method_inputs": {"yarn": {"rope_scaling": {...}, "window": None, "sinks": 0}, ...},
     "perplexity": [{"method", "length", "data_key", "nll", ...}, ...],
     "passkey": [{"method", "length", "depth", "data_key", "accuracy", ...}], ...}

A stored row is valid only for the inputs it was computed from, checked at three levels:

1. Run inputs (`inputs=` of `ResultStore`): the model weights, target length and factor, dtype,
   tokenizer, corpus and `PROTOCOL_VERSION`. They are shared by every row, so a file opened
   with other run inputs refuses (`InputsChanged`, naming each changed field) or, with
   `on_change="recompute"`, discards every row. Nothing computed under the old inputs is ever
   shown beside rows computed under the new ones.
2. Method inputs (`bind_method`): the `ModelConfig` changes of one extension method (RoPE
   scaling mapping and factor, window, sinks). Other values discard that method's rows only.
3. Row inputs (`data_key` of each record, set by the sweeps): a fingerprint of the exact token
   ids the row scored (documents or prompts, which covers the tokenizer, number of documents,
   trials and seed). A cell whose key differs is recomputed and its row replaced (`put`).

Every write goes to a temporary file that is flushed to disk and renamed over the results
file (`os.replace`), so a sweep killed at any point leaves either the old or the new file and
resumes from its last finished cell when started again.
"""

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from longctx_jax.atomic import write_atomically

# Bump when a sweep's protocol (prompt text, scoring, document cut) changes its numbers.
PROTOCOL_VERSION = 3  # 3: whole-file documents with BOS rule, per-document perplexity rows
ON_CHANGE = ("refuse", "recompute")
_LOG = logging.getLogger(__name__)


class InputsChanged(ValueError):
    """The results file holds rows computed from other inputs than the ones given."""


def _canonical(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"dtype": str(value.dtype), "shape": list(value.shape),
                "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def fingerprint(value: Any) -> str:
    """A 16-hex-digit digest of a JSON-like value (mappings, sequences, scalars, numpy arrays).

    Equal values give equal digests regardless of mapping order or tuple-vs-list; an array is
    hashed by dtype, shape and bytes.
    """
    text = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, or of every file under a directory (relative names included).

    Raises:
      ValueError: `path` does not exist.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"cannot fingerprint {path!r}: no such file or directory")
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    digest = hashlib.sha256()
    for name in files:
        if name != path:
            digest.update(os.path.relpath(name, path).encode() + b"\0")
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    names = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
            for k in names if _canonical(old.get(k)) != _canonical(new.get(k))]


def _jsonable(value: Mapping[str, Any]) -> dict[str, Any]:
    """`value` as it reads back from JSON (tuples become lists), for exact comparisons."""
    return json.loads(json.dumps(_canonical(value)))


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"results file {path} is not valid JSON ({error}); it was truncated or overwritten "
            "outside this program. Move it aside (or delete it) to start the sweep afresh."
        ) from error
    if not isinstance(data, dict):
        raise ValueError(f"results file {path} holds a {type(data).__name__}, not a JSON object; "
                         "move it aside (or delete it) to start afresh")
    return data


class ResultStore:
    """Results JSON at `path`, loaded if it exists.

    Args:
      path: the JSON file (created on the first write); its directory is created if missing.
      meta: top-level descriptive fields (model name, train length, ...) merged into the file.
      inputs: run-level inputs every row depends on (see module doc); None skips the check.
      on_change: what to do when the file's recorded `inputs` differ from `inputs` (or the
        file has rows but no recorded inputs): "refuse" raises `InputsChanged` naming the
        changed fields; "recompute" discards every stored row.

    Raises:
      ValueError: `path` is a directory, its parent is a file, the file is not a JSON object,
        or `on_change` is unknown. `InputsChanged` (a ValueError) as described above.
    """

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None, *,
                 inputs: Mapping[str, Any] | None = None, on_change: str = "refuse"):
        if on_change not in ON_CHANGE:
            raise ValueError(f"on_change must be one of {ON_CHANGE}, got {on_change!r}")
        self.path = os.path.abspath(os.fspath(path))
        if os.path.isdir(self.path):
            raise ValueError(f"results path {self.path} is a directory; give a file path inside the workdir")
        parent = os.path.dirname(self.path)
        existing = parent
        while existing and not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if existing and not os.path.isdir(existing):
            raise ValueError(f"workdir {parent} cannot be created: {existing} is a file, not a directory")
        self.data: dict[str, Any] = _load(self.path) if os.path.exists(self.path) else {}
        if inputs is not None:
            self._bind_run(dict(inputs), on_change)
        if meta:
            self.update_meta(meta)

    def _sections(self) -> list[str]:
        return [k for k, v in self.data.items() if isinstance(v, list) and all(isinstance(r, dict) for r in v)
                and v and "method" in v[0]]

    def _num_rows(self, method: str | None = None) -> int:
        return sum(1 for s in self._sections() for r in self.data[s]
                   if method is None or r.get("method") == method)

    def _bind_run(self, inputs: dict[str, Any], on_change: str) -> None:
        inputs = _jsonable({**inputs, "protocol_version": PROTOCOL_VERSION})
        stored = self.data.get("inputs")
        rows = self._num_rows()
        if stored == inputs or (stored is None and rows == 0):
            if stored is None:
                self.data["inputs"] = inputs
                self._write()
            return
        changes = (["the file records no inputs (written by an older version)"] if stored is None
                   else _differences(stored, inputs))
        if on_change == "refuse":
            raise InputsChanged(
                f"{self.path} holds {rows} rows computed from other run inputs ({'; '.join(changes)}). "
                "Mixing them would report wrong numbers: use another workdir, or delete the file "
                "to recompute."
            )
        _LOG.warning("discarding %d rows of %s: run inputs changed (%s)", rows, self.path, "; ".join(changes))
        for section in self._sections():
            del self.data[section]
        self.data.pop("method_inputs", None)
        self.data["inputs"] = inputs
        self._write()

    def bind_method(self, method: str, inputs: Mapping[str, Any]) -> bool:
        """Records the inputs of `method`; discards its rows if they were computed from others.

        Args:
          method: the method label the sweeps write in each record's "method" field.
          inputs: the method's configuration (e.g. its `ModelConfig` changes).

        Returns:
          True if stored rows of `method` were discarded.
        """
        inputs = _jsonable(inputs)
        table = self.data.setdefault("method_inputs", {})
        stored = table.get(method)
        rows = self._num_rows(method)
        if stored == inputs:
            return False
        if rows:
            changes = (["no inputs recorded for them"] if stored is None else _differences(stored, inputs))
            _LOG.warning("recomputing %d rows of method %r: its inputs changed (%s)", rows, method,
                            "; ".join(changes))
            for section in self._sections():
                self.data[section] = [r for r in self.data[section] if r.get("method") != method]
        table[method] = inputs
        self._write()
        return bool(rows)

    def update_meta(self, meta: Mapping[str, Any]) -> None:
        """Sets top-level descriptive fields and writes the file."""
        reserved = {"inputs", "method_inputs"} & set(meta)
        if reserved:
            raise ValueError(f"meta fields {sorted(reserved)} are reserved for the input keys")
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

    def put(self, section: str, record: Mapping[str, Any], *, cell: Iterable[str]) -> None:
        """Stores `record`, replacing any record that has the same values of the `cell` fields.

        Args:
          section: results section ("perplexity", "passkey", ...).
          record: the row; must hold every field named in `cell`.
          cell: the fields that identify a grid cell (e.g. ("method", "length", "depth")).
        """
        cell = tuple(cell)
        missing = [k for k in cell if k not in record]
        if missing:
            raise ValueError(f"record lacks the cell fields {missing}: {dict(record)}")
        rows = [r for r in self.data.get(section, []) if any(r.get(k) != record[k] for k in cell)]
        self.data[section] = [*rows, dict(record)]
        self._write()

    def _write(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        write_atomically(self.path, json.dumps(self.data, indent=1))
