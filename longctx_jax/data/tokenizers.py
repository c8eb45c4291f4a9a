"""Tokenizer interface and the byte-level tokenizer.

Every tokenizer the data pipeline accepts implements `Tokenizer`: `encode` maps text to ids
WITHOUT special tokens (packing adds bos/eos itself), `decode` maps ids back to text and drops
special ids, and `token_bytes` says how many UTF-8 bytes each id stands for, so bits-per-byte
can be computed for any vocabulary:

  val_bpb = sum(nll over targets with bytes > 0) / (ln 2 * sum(bytes of those targets))

`ByteTokenizer` needs no files: ids 0..255 are the UTF-8 bytes, then pad (256), bos (257) and
eos (258), so `vocab_size == 259`. The vocabulary is not rounded up here; a model that wants an
embedding table padded to a multiple of 128 pads it itself (ids >= 259 never occur in data).
"""

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer (byte-level here, BPE from a GGUF later).

    Attributes:
      name: stable identifier used in on-disk cache keys (change it when the vocabulary changes).
      vocab_size: number of ids; every id is in [0, vocab_size).
      pad_id, bos_id, eos_id: special ids.
      token_bytes: int32 [vocab_size], UTF-8 bytes each id represents (0 for special/control ids,
        1 for a byte-fallback id, len(piece.encode()) for a BPE piece).
    """

    name: str
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    token_bytes: np.ndarray

    def encode(self, text: str) -> list[int]:
        """Text -> ids, without bos/eos."""
        ...

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Ids -> text; special ids are dropped."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0..255 are bytes, 256 pad, 257 bos, 258 eos (vocab 259)."""

    name = "byte"
    num_bytes = 256
    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259

    def __init__(self) -> None:
        token_bytes = np.zeros((self.vocab_size,), np.int32)
        token_bytes[: self.num_bytes] = 1
        token_bytes.setflags(write=False)
        self.token_bytes = token_bytes

    def encode(self, text: str) -> list[int]:
        """Text -> list of byte ids (no specials)."""
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        """Text -> int32 [num_bytes] byte ids (no specials); the fast path packing uses."""
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Byte ids -> text; special ids are dropped, invalid UTF-8 becomes U+FFFD."""
        ids_N = np.asarray(ids, np.int64).reshape(-1)
        if ids_N.size and (ids_N.min() < 0 or ids_N.max() >= self.vocab_size):
            raise ValueError(f"ids must be in [0, {self.vocab_size}); got {ids_N.min()} .. {ids_N.max()}")
        data = ids_N[ids_N < self.num_bytes].astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")


def encode_array(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """int32 ids of `text` (no specials), using a tokenizer's fast path when it has one."""
    fast = getattr(tokenizer, "encode_array", None)
    if fast is not None:
        return fast(text)
    return np.asarray(tokenizer.encode(text), np.int32)


def prompt_prefix(tokenizer: Tokenizer) -> list[int]:
    """The ids a checkpoint expects before any text: `[bos_id]` when the tokenizer says `add_bos`.

    The one rule for generation and every evaluator (a scored document or a retrieval prompt
    starts the way a generated prompt does). Tokenizers without an `add_bos` attribute (the
    byte tokenizer of the from-scratch models) add nothing.
    """
    if getattr(tokenizer, "add_bos", False) and getattr(tokenizer, "bos_id", None) is not None:
        return [int(tokenizer.bos_id)]
    return []
