"""Unigram byte baseline for bits per byte: what a model that ignores all context achieves.

p(b) = (count_train(b) + 1) / (N_train + 256)     (add-one smoothing over the 256 byte values)
bpb  = -sum_b count_val(b) * log2 p(b) / N_val

A trained model's val_bpb should fall well below this number; the trainer logs it once.
"""

from collections.abc import Iterable

import ml_collections
import numpy as np

from longctx_jax.data import sources


def byte_counts(texts: Iterable[str]) -> np.ndarray:
    """int64 [256] histogram of the UTF-8 bytes of `texts`."""
    counts = np.zeros((256,), np.int64)
    for text in texts:
        counts += np.bincount(np.frombuffer(text.encode("utf-8"), np.uint8), minlength=256)
    return counts


def unigram_bits_per_byte(train_texts: Iterable[str], val_texts: Iterable[str]) -> float:
    """Cross-entropy in bits per byte of val bytes under the smoothed train byte unigram."""
    train = byte_counts(train_texts)
    val = byte_counts(val_texts)
    if val.sum() == 0:
        raise ValueError("validation texts hold no bytes; bits per byte is undefined")
    log2_p = np.log2(train + 1.0) - np.log2(train.sum() + 256.0)
    return float(-(val * log2_p).sum() / val.sum())


def byte_unigram_baseline(data_config: ml_collections.ConfigDict) -> float:
    """`unigram_bits_per_byte` of `data_config`'s train split evaluated on its validation split."""
    train = sources.load_documents(data_config, data_config.train_split)
    val = sources.load_documents(data_config, data_config.val_split)
    return unigram_bits_per_byte(train.read_all(), val.read_all())
