"""Long real documents for evaluation: whole single files that ship with the interpreter.

A document is ONE file, never a window across two: perplexity at length N scores the first N
targets of a file at least N + 1 tokens long, so every scored token's context is its own file
(a stream of concatenated files would score the second file with the first as irrelevant
context). The documents, in order:

1. prose: the Python Language Reference topics of `pydoc_data/topics.py` (the text `help()`
   shows; about 465K characters of English prose, ~113K SmolLM2 tokens), read as text: the
   topic strings joined by blank lines in the module's order;
2. code: every stdlib `.py` file (skipping site-packages, tests and caches) sorted by relative
   path, keeping those long enough for the requested length with the given tokenizer
   (for SmolLM2 at 16K tokens: `_pydecimal.py`, `_pyio.py`, `argparse.py`, ...).

Each document starts with `data.tokenizers.prompt_prefix(tokenizer)` (BOS where the
tokenizer says `add_bos`), exactly as a generated prompt does. The order is the same on every
machine with the same Python version (`python_version()` is part of every result's inputs).
"""

import dataclasses
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np

from longctx_jax.data.stdlib_corpus import SPLITS, doc_name, split_of
from longctx_jax.data.tokenizers import Tokenizer, encode_array, prompt_prefix

EXCLUDE_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
PROSE_NAME = "pydoc_data/topics.py (Python Language Reference topics, prose)"
PROSE_MODULE = "pydoc_data.topics"
SEPARATOR = "\n\n"

_ENCODED: dict[tuple[int, str], np.ndarray] = {}


@dataclasses.dataclass(frozen=True)
class Document:
    """One whole evaluation document.

    Attributes:
      name: where it comes from (a stdlib path relative to the stdlib root, or `PROSE_NAME`).
      kind: "prose" or "code".
      ids: int32 `[L]`, the whole file's tokens, BOS first where the tokenizer adds one.
    """

    name: str
    kind: str
    ids: np.ndarray


def python_version() -> str:
    """The interpreter version whose stdlib is the corpus, e.g. "3.11.7"."""
    return ".".join(str(v) for v in sys.version_info[:3])


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(min_chars: int = 20_000) -> list[Path]:
    """Stdlib `.py` files with at least `min_chars` characters, sorted by relative path."""
    root = stdlib_root()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS)
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                if path.stat().st_size >= min_chars:
                    found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def prose_text() -> str:
    """The prose document: the reference-manual topics shipped in `pydoc_data.topics`."""
    from pydoc_data.topics import topics  # stdlib; imported on use (a 500 KB module)

    return SEPARATOR.join(topics.values())


def _encode(tokenizer: Tokenizer, key: str, read) -> np.ndarray:
    cache_key = (id(tokenizer), key)
    ids = _ENCODED.get(cache_key)
    if ids is None:
        prefix = np.asarray(prompt_prefix(tokenizer), np.int32)
        ids = np.concatenate([prefix, encode_array(tokenizer, read())])
        ids.setflags(write=False)
        _ENCODED[cache_key] = ids
    return ids


def corpus_split(name: str, val_fraction: float) -> str:
    """The split ("train" / "validation") of the training corpus (`data.stdlib_corpus`, the
    fine-tuning job's default data) that holds the evaluation document `name`."""
    module = PROSE_MODULE if name == PROSE_NAME else doc_name(name)
    return split_of(module, val_fraction)


def long_documents(tokenizer: Tokenizer, min_tokens: int, num_docs: int, *,
                   skip: int = 0, split: str = "", val_fraction: float = 0.05) -> list[Document]:
    """The first `num_docs` documents (after skipping `skip`) of at least `min_tokens` tokens.

    Args:
      tokenizer: the model's tokenizer (documents are tokenized whole, BOS included).
      min_tokens: the least number of tokens a document must have (e.g. length + 1).
      num_docs: how many documents to return.
      skip: qualifying documents to pass over first (to hold documents out of another use,
        e.g. a search that must not see the evaluation documents).
      split: "" for every document; "validation" (or "train") for only the documents in that
        split of the stdlib training corpus (`data.stdlib_corpus.split_of` at `val_fraction`):
        a model fine-tuned on that corpus's train split is evaluated on "validation".
      val_fraction: the training corpus's validation share (`config.data.val_fraction`).

    Raises:
      ValueError: a non-positive argument, an unknown split, or fewer qualifying documents than
        asked for.
    """
    if min_tokens <= 0 or num_docs <= 0 or skip < 0:
        raise ValueError(f"need min_tokens > 0, num_docs > 0, skip >= 0; got {min_tokens}, {num_docs}, "
                         f"{skip}")
    if split and split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; valid: '' (all documents) or one of {SPLITS}")
    root = stdlib_root()
    candidates = [(PROSE_NAME, "prose", prose_text)]
    # A file of fewer characters than tokens needed cannot qualify for any tokenizer of >= 1 char/token
    # except byte-fallback ones; ~1 char per token is the floor for the byte tokenizer.
    for path in stdlib_files(min_chars=min(min_tokens, 20_000)):
        candidates.append((path.relative_to(root).as_posix(), "code",
                           lambda p=path: p.read_text(encoding="utf-8", errors="replace")))
    found: list[Document] = []
    passed = 0
    if split:
        candidates = [c for c in candidates if corpus_split(c[0], val_fraction) == split]
    for name, kind, read in candidates:
        ids = _encode(tokenizer, name, read)
        if ids.shape[0] < min_tokens:
            continue
        if passed < skip:
            passed += 1
            continue
        found.append(Document(name, kind, ids))
        if len(found) == num_docs:
            return found
    where = f" in its {split!r} split (val_fraction {val_fraction})" if split else ""
    raise ValueError(f"the corpus (Python {python_version()} stdlib) has {len(found) + passed} documents of "
                     f">= {min_tokens} tokens{where}, fewer than the {skip} skipped + {num_docs} requested")


def documents(tokenizer: Tokenizer, length: int, num_docs: int, *, offset: int = 0) -> np.ndarray:
    """`[num_docs, length]` int32: the first `length` tokens of each of `num_docs` whole documents.

    Args:
      tokenizer: the model's tokenizer.
      length: tokens per row (a prefix of one document; never spans two).
      num_docs: rows.
      offset: qualifying documents skipped first (see `long_documents`).
    """
    if length <= 0 or num_docs <= 0:
        raise ValueError(f"length and num_docs must be positive, got {length} and {num_docs}")
    docs = long_documents(tokenizer, length, num_docs, skip=offset)
    return np.stack([d.ids[:length] for d in docs])


def token_stream(tokenizer: Tokenizer, num_tokens: int, *, min_chars: int = 20_000) -> np.ndarray:
    """The first `num_tokens` ids of the stdlib code files concatenated (blank line between files).

    Filler for retrieval prompts (a haystack), never a perplexity document: it crosses files.

    Raises:
      ValueError: if the stdlib holds fewer tokens than asked for.
    """
    pieces, total = [], 0
    for path in stdlib_files(min_chars):
        ids = _encode(tokenizer, "stream:" + path.as_posix(),
                      lambda p=path: p.read_text(encoding="utf-8", errors="replace") + SEPARATOR)
        ids = ids[len(prompt_prefix(tokenizer)):]
        pieces.append(ids)
        total += ids.shape[0]
        if total >= num_tokens:
            return np.concatenate(pieces)[:num_tokens]
    raise ValueError(f"the stdlib corpus has {total} tokens, fewer than the {num_tokens} requested")
