"""Long real documents for evaluation: the running interpreter's standard library sources.

`stdlib_files` lists the stdlib `.py` files of at least `min_chars` characters (skipping
site-packages, test directories and caches) sorted by relative path, so the order is the same
on every machine with the same Python version. `token_stream` encodes them one file at a time
and concatenates the ids (files joined by a blank line) until it has enough tokens;
`documents` cuts that stream into equal, non-overlapping documents. Shorter evaluation lengths
use prefixes of the same documents, as in the Position Interpolation and YaRN evaluations.
"""

import os
import sys
import sysconfig
from pathlib import Path

import numpy as np

from longctx_jax.data.tokenizers import Tokenizer

EXCLUDE_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
SEPARATOR = "\n\n"

_STREAMS: dict[tuple[int, int], np.ndarray] = {}


def python_version() -> str:
    """The interpreter version whose stdlib is the corpus, e.g. "3.11.7"."""
    return ".".join(str(v) for v in sys.version_info[:3])


def stdlib_files(min_chars: int = 20_000) -> list[Path]:
    """Stdlib `.py` files with at least `min_chars` characters, sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS)
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                if path.stat().st_size >= min_chars:
                    found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def token_stream(tokenizer: Tokenizer, num_tokens: int, *, min_chars: int = 20_000) -> np.ndarray:
    """The first `num_tokens` ids (int32) of the concatenated long stdlib files.

    Raises:
      ValueError: if the stdlib holds fewer tokens than asked for.
    """
    key = (id(tokenizer), min_chars)
    cached = _STREAMS.get(key)
    if cached is not None and cached.shape[0] >= num_tokens:
        return cached[:num_tokens]
    pieces, total = [], 0
    for path in stdlib_files(min_chars):
        text = path.read_text(encoding="utf-8", errors="replace") + SEPARATOR
        ids = np.asarray(tokenizer.encode(text), np.int32)
        pieces.append(ids)
        total += ids.shape[0]
        if total >= num_tokens:
            break
    if total < num_tokens:
        raise ValueError(f"the stdlib corpus has {total} tokens, fewer than the {num_tokens} requested")
    stream = np.concatenate(pieces)
    _STREAMS[key] = stream
    return stream[:num_tokens]


def documents(tokenizer: Tokenizer, length: int, num_docs: int, *, offset: int = 0) -> np.ndarray:
    """`[num_docs, length]` int32: consecutive slices of the stream starting at `offset`."""
    if length <= 0 or num_docs <= 0:
        raise ValueError(f"length and num_docs must be positive, got {length} and {num_docs}")
    stream = token_stream(tokenizer, offset + length * num_docs)
    return stream[offset:].reshape(num_docs, length)
