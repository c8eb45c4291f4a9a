"""Tokenize documents once, then cut fixed-length training windows out of the document stream.

Every document becomes `[bos, *encode(text), eos]`; all of them sit end to end in one flat
token array (`TokenizedDocs`). An epoch lays the documents out in some order (a permutation)
and cuts that stream into windows of T + 1 tokens with stride T, so every token after the
first is a target exactly once per epoch:

  window j = stream[j*T : j*T + T + 1];  inputs = window[:-1],  targets = window[1:]

Per window (all `[T]`):
  inputs, targets  int32   token ids; `pad_id` past the end of the stream.
  positions        int32   0 at the first token of each document piece in the window, then +1.
                           A document cut by a window edge restarts at 0 in the next window (the
                           model cannot see the earlier part, so positions stay < T).
  segment_ids      int32   1, 2, ... per document piece in the window; 0 on padding.
  loss_mask        float32 1 where input and target belong to the same document; 0 on padding
                           and on the eos -> next bos transition.
  target_bytes     int32   UTF-8 bytes the target stands for (`tokenizer.token_bytes`), times
                           loss_mask. val_bpb = sum(nll * (target_bytes > 0)) / (ln 2 * sum(target_bytes)).
"""

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

from longctx_jax.data.tokenizers import Tokenizer, encode_array

BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask", "target_bytes")


@dataclasses.dataclass(frozen=True)
class TokenizedDocs:
    """Documents as one flat token array.

    Attributes:
      tokens: [total] ids (uint16 when the vocabulary fits, else int32); document d is
        tokens[starts[d]:starts[d + 1]], bos first and eos last.
      starts: int64 [num_docs + 1] offsets, starts[0] == 0, starts[-1] == total.
    """

    tokens: np.ndarray
    starts: np.ndarray

    def __post_init__(self):
        if self.starts.ndim != 1 or self.starts.size < 2 or self.starts[0] != 0:
            raise ValueError(
                f"starts must be [num_docs + 1] offsets from 0, num_docs >= 1; got {self.starts}"
            )
        if self.starts[-1] != self.tokens.size or np.any(np.diff(self.starts) < 2):
            raise ValueError("each document needs >= 2 tokens (bos, eos) and starts[-1] == len(tokens)")

    @property
    def num_docs(self) -> int:
        return self.starts.size - 1

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)

    def doc(self, d: int) -> np.ndarray:
        """int32 tokens of document d (with bos and eos)."""
        return self.tokens[self.starts[d] : self.starts[d + 1]].astype(np.int32)

    def save(self, path: str) -> None:
        """Write `path` (.npz, uncompressed) atomically."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}.npz"
        np.savez(tmp, tokens=self.tokens, starts=self.starts)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "TokenizedDocs":
        with np.load(path) as f:
            return cls(tokens=f["tokens"], starts=f["starts"])


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def tokenize_documents(texts: Sequence[str], tokenizer: Tokenizer) -> TokenizedDocs:
    """Encode each text as [bos, *ids, eos] and concatenate.

    Args:
      texts: documents (at least one).
      tokenizer: any `Tokenizer`.

    Returns:
      The flat `TokenizedDocs`.
    """
    if len(texts) == 0:
        raise ValueError("tokenize_documents needs at least one document; got none")
    dtype = token_dtype(tokenizer.vocab_size)
    bos = np.array([tokenizer.bos_id], dtype)
    eos = np.array([tokenizer.eos_id], dtype)
    pieces, lengths = [], []
    for text in texts:
        ids = encode_array(tokenizer, text).astype(dtype)
        pieces += [bos, ids, eos]
        lengths.append(ids.size + 2)
    starts = np.zeros((len(lengths) + 1,), np.int64)
    np.cumsum(lengths, out=starts[1:])
    return TokenizedDocs(tokens=np.concatenate(pieces), starts=starts)


def num_windows(num_tokens: int, seq_len: int) -> int:
    """Windows of seq_len + 1 tokens, stride seq_len, needed to cover a stream of num_tokens."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1; got {seq_len}")
    return max(1, math.ceil((num_tokens - 1) / seq_len))


def pack_windows(
    docs: TokenizedDocs,
    order: np.ndarray,
    window_ids: np.ndarray,
    seq_len: int,
    pad_id: int,
    token_bytes: np.ndarray,
) -> dict[str, np.ndarray]:
    """Cut windows `window_ids` out of the stream of documents laid out in `order`.

    Args:
      docs: the tokenized documents.
      order: int [num_docs], a permutation of document indices: the stream layout.
      window_ids: int [B], which windows (each in [0, num_windows)).
      seq_len: T, tokens per model input.
      pad_id: id written past the end of the stream.
      token_bytes: int [vocab] UTF-8 bytes per id.

    Returns:
      Dict of `BATCH_KEYS` arrays, each [B, T] (see the module docstring).
    """
    T = seq_len
    order = np.asarray(order, np.int64)
    lengths_D = np.diff(docs.starts)[order]
    ends_D = np.cumsum(lengths_D)
    begins_D = ends_D - lengths_D
    total = int(ends_D[-1])
    window_ids_B = np.asarray(window_ids, np.int64).reshape(-1)
    if window_ids_B.size and (window_ids_B.min() < 0 or window_ids_B.max() >= num_windows(total, T)):
        raise ValueError(f"window ids must be in [0, {num_windows(total, T)}); got {window_ids_B}")

    p_BW = window_ids_B[:, None] * T + np.arange(T + 1)[None, :]  # W = T + 1 stream positions.
    valid_BW = p_BW < total
    rank_BW = np.minimum(np.searchsorted(ends_D, p_BW, side="right"), order.size - 1)
    src_BW = docs.starts[order[rank_BW]] + p_BW - begins_D[rank_BW]
    tokens_BW = np.where(valid_BW, docs.tokens[np.where(valid_BW, src_BW, 0)].astype(np.int32), pad_id)
    rank_BW = np.where(valid_BW, rank_BW, -1)

    new_BW = np.ones_like(valid_BW)
    new_BW[:, 1:] = rank_BW[:, 1:] != rank_BW[:, :-1]
    segment_BW = np.where(valid_BW, np.cumsum(new_BW, axis=1), 0)
    idx_W = np.arange(T + 1)
    first_BW = np.maximum.accumulate(np.where(new_BW, idx_W[None, :], 0), axis=1)
    positions_BW = np.where(valid_BW, idx_W[None, :] - first_BW, 0)

    targets_BT = tokens_BW[:, 1:]
    loss_mask_BT = (segment_BW[:, :-1] == segment_BW[:, 1:]) & valid_BW[:, 1:]
    return {
        "inputs": tokens_BW[:, :-1].astype(np.int32),
        "targets": targets_BT.astype(np.int32),
        "positions": positions_BW[:, :-1].astype(np.int32),
        "segment_ids": segment_BW[:, :-1].astype(np.int32),
        "loss_mask": loss_mask_BT.astype(np.float32),
        "target_bytes": (np.asarray(token_bytes)[targets_BT] * loss_mask_BT).astype(np.int32),
    }
