"""Deterministic, resumable batches: the whole iterator state is the step number.

Training: epoch e lays out the documents in `np.random.default_rng([seed, e]).permutation`,
cuts that stream into `num_sequences` windows (see packing.py), and step s takes the global
windows s*B .. s*B + B - 1 (window g is window g % num_sequences of epoch g // num_sequences).
So `batch_at(s)` is the same on every call, machine and restart, and a resumed run continues
the exact data order. Validation: the first N windows of the validation split in source order.

  batches = make_batches(config.data, ByteTokenizer(), "train", seq_len=256, batch_size=8, seed=0)
  batch = batches.batch_at(step)            # dict of [8, 256] numpy arrays, see packing.BATCH_KEYS
  val = validation_set(config.data, ByteTokenizer(), seq_len=256, num_sequences=64)

Tokenized documents are cached as `<data_dir>/tokenized/<dataset>-<split>-<tokenizer>.npz`
(the stdlib with the byte tokenizer tokenizes in about a second anyway).
"""

import os

import ml_collections
import numpy as np

from longctx_jax.data import packing, sources
from longctx_jax.data.tokenizers import Tokenizer


class Batches:
    """Batch `step` -> dict of [batch_size, seq_len] arrays, a pure function of (docs, seed, step).

    Attributes:
      num_sequences: windows per epoch.
      steps_per_epoch: num_sequences / batch_size (a float; batches may straddle epochs).
    """

    def __init__(
        self,
        docs: packing.TokenizedDocs,
        seq_len: int,
        batch_size: int,
        seed: int,
        pad_id: int,
        token_bytes: np.ndarray,
        shuffle: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.docs = docs
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self.token_bytes = np.asarray(token_bytes)
        self.shuffle = shuffle
        self.num_sequences = packing.num_windows(docs.num_tokens, seq_len)
        self.steps_per_epoch = self.num_sequences / batch_size
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        """Document layout of `epoch`: a seeded permutation, or source order when not shuffling."""
        if not self.shuffle:
            return np.arange(self.docs.num_docs)
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.docs.num_docs)
        return self._orders[epoch]

    def sequences(self, start: int, count: int) -> dict[str, np.ndarray]:
        """Global windows start .. start + count - 1 (spanning epochs as needed), each key [count, T]."""
        if start < 0 or count < 1:
            raise ValueError(f"need start >= 0 and count >= 1; got start={start}, count={count}")
        g = np.arange(start, start + count, dtype=np.int64)
        epochs, windows = np.divmod(g, self.num_sequences)
        parts = []
        for epoch in np.unique(epochs):
            parts.append(
                packing.pack_windows(
                    self.docs,
                    self.order(int(epoch)),
                    windows[epochs == epoch],
                    self.seq_len,
                    self.pad_id,
                    self.token_bytes,
                )
            )
        return {k: np.concatenate([p[k] for p in parts]) for k in packing.BATCH_KEYS}

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """The batch of training step `step` (>= 0): each key [batch_size, seq_len]."""
        if step < 0:
            raise ValueError(f"step must be >= 0; got {step}")
        return self.sequences(step * self.batch_size, self.batch_size)


def tokenized_documents(
    data_config: ml_collections.ConfigDict, tokenizer: Tokenizer, split: str
) -> packing.TokenizedDocs:
    """The split's documents tokenized with bos/eos, from the on-disk cache when present."""
    docs = sources.load_documents(data_config, split)
    path = os.path.join(
        sources.resolve_data_dir(data_config.data_dir), "tokenized", f"{docs.cache_id}-{tokenizer.name}.npz"
    )
    if os.path.exists(path):
        return packing.TokenizedDocs.load(path)
    tokenized = packing.tokenize_documents(docs.read_all(), tokenizer)
    tokenized.save(path)
    return tokenized


def make_batches(
    data_config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    split: str,
    seq_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
) -> Batches:
    """`Batches` over one split of the dataset `data_config` names (built and tokenized on first use).

    Args:
      data_config: `config.data` (see `sources.default_data_config`).
      tokenizer: any `Tokenizer`.
      split: e.g. "train".
      seq_len: T.
      batch_size: B.
      seed: shuffling seed; the same seed gives the same batch for every step.
      shuffle: permute documents per epoch (False: source order every epoch).

    Returns:
      `Batches`; call `.batch_at(step)`.
    """
    docs = tokenized_documents(data_config, tokenizer, split)
    return Batches(docs, seq_len, batch_size, seed, tokenizer.pad_id, tokenizer.token_bytes, shuffle)


def validation_set(
    data_config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    seq_len: int,
    num_sequences: int,
    split: str | None = None,
) -> dict[str, np.ndarray]:
    """The first `num_sequences` windows of the validation split in source order: each key [N, T].

    N is min(num_sequences, windows in the split), so a small split never repeats sequences.
    `split` defaults to `data_config.val_split`.
    """
    docs = tokenized_documents(data_config, tokenizer, split or data_config.val_split)
    batches = Batches(docs, seq_len, 1, 0, tokenizer.pad_id, tokenizer.token_bytes, shuffle=False)
    return batches.sequences(0, min(num_sequences, batches.num_sequences))
