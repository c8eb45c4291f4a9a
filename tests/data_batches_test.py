"""Batches: batch_at determinism, seeds, epochs, the validation set, and the unigram baseline."""

import math
import os
from collections import Counter

import chex
import numpy as np
import pytest

from longctx_jax.data import baseline, batches, packing, sources
from longctx_jax.data.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


def _synthetic_batches(seed, seq_len=16, batch_size=4, shuffle=True):
    texts = [f"document {i}: " + "abcdefghij"[: i % 10] * (i % 7 + 1) for i in range(50)]
    docs = packing.tokenize_documents(texts, TOK)
    return batches.Batches(docs, seq_len, batch_size, seed, TOK.pad_id, TOK.token_bytes, shuffle)


@pytest.fixture(scope="module")
def stdlib_config(tmp_path_factory):
    config = sources.default_data_config()
    config.data_dir = str(tmp_path_factory.mktemp("data"))
    return config


def test_batch_at_is_deterministic():
    a, b = _synthetic_batches(seed=7), _synthetic_batches(seed=7)
    for step in [0, 1, 5, 3, 1000, 0]:
        chex.assert_trees_all_equal(a.batch_at(step), b.batch_at(step))
        chex.assert_trees_all_equal(a.batch_at(step), a.batch_at(step))
        for key in packing.BATCH_KEYS:
            chex.assert_shape(a.batch_at(step)[key], (4, 16))


def test_seeds_and_epochs_differ():
    a, b = _synthetic_batches(seed=0), _synthetic_batches(seed=1)
    assert not np.array_equal(a.batch_at(0)["inputs"], b.batch_at(0)["inputs"])
    assert not np.array_equal(a.order(0), a.order(1))
    assert sorted(a.order(3).tolist()) == list(range(a.docs.num_docs))


def test_steps_cover_each_epoch_and_straddle():
    a = _synthetic_batches(seed=3, batch_size=5)
    n = a.num_sequences
    assert n % 5 != 0, "the test wants a batch that straddles two epochs"
    steps = math.ceil(2 * n / 5)
    stacked = np.concatenate([a.batch_at(s)["targets"] for s in range(steps)])
    mask = np.concatenate([a.batch_at(s)["loss_mask"] for s in range(steps)])
    epoch0 = packing.pack_windows(a.docs, a.order(0), np.arange(n), 16, TOK.pad_id, TOK.token_bytes)
    epoch1 = packing.pack_windows(a.docs, a.order(1), np.arange(n), 16, TOK.pad_id, TOK.token_bytes)
    np.testing.assert_array_equal(stacked[:n], epoch0["targets"])
    np.testing.assert_array_equal(stacked[n : 2 * n], epoch1["targets"])
    # Each epoch trains on every byte of every document once.
    total_bytes = sum(len(t) for t in (a.docs.doc(d)[1:-1] for d in range(a.docs.num_docs)))
    assert mask[:n].sum() == mask[n : 2 * n].sum() == a.docs.num_tokens - a.docs.num_docs
    assert epoch0["target_bytes"].sum() == total_bytes


def test_no_shuffle_is_source_order():
    a = _synthetic_batches(seed=0, shuffle=False)
    np.testing.assert_array_equal(a.order(5), np.arange(a.docs.num_docs))
    first = a.docs.doc(0)
    np.testing.assert_array_equal(a.batch_at(0)["inputs"][0, : first.size], first)


def test_bad_arguments():
    a = _synthetic_batches(seed=0)
    with pytest.raises(ValueError, match="step"):
        a.batch_at(-1)
    with pytest.raises(ValueError, match="count"):
        a.sequences(0, 0)
    with pytest.raises(ValueError, match="batch_size"):
        batches.Batches(a.docs, 8, 0, 0, TOK.pad_id, TOK.token_bytes)


def test_stdlib_end_to_end(stdlib_config):
    train = batches.make_batches(stdlib_config, TOK, "train", seq_len=128, batch_size=8, seed=0)
    cache = os.path.join(stdlib_config.data_dir, "tokenized")
    assert len(os.listdir(cache)) == 1
    again = batches.make_batches(stdlib_config, TOK, "train", seq_len=128, batch_size=8, seed=0)
    other = batches.make_batches(stdlib_config, TOK, "train", seq_len=128, batch_size=8, seed=1)
    assert train.num_sequences > 50_000
    for step in (0, 17, 123_456):
        batch = train.batch_at(step)
        chex.assert_trees_all_equal(batch, again.batch_at(step))
        chex.assert_shape(list(batch.values()), (8, 128))
        assert not np.array_equal(batch["inputs"], other.batch_at(step)["inputs"])
        assert batch["inputs"].max() < TOK.vocab_size
    docs = sources.load_documents(stdlib_config, "train")
    assert train.docs.num_docs == len(docs)
    np.testing.assert_array_equal(train.docs.doc(0)[1:-1], TOK.encode(docs[0]))

    val = batches.validation_set(stdlib_config, TOK, seq_len=128, num_sequences=20)
    chex.assert_shape(list(val.values()), (20, 128))
    chex.assert_trees_all_equal(val, batches.validation_set(stdlib_config, TOK, 128, 20))
    val_docs = sources.load_documents(stdlib_config, "validation")
    assert TOK.decode(val["inputs"][0]) == val_docs[0][:127]
    everything = batches.validation_set(stdlib_config, TOK, seq_len=128, num_sequences=10**9)
    val_bytes = sum(len(t.encode("utf-8")) for t in val_docs.read_all())
    assert everything["target_bytes"].sum() == val_bytes


def test_unigram_bits_per_byte_matches_hand_computation():
    train, val = ["aab", "é"], ["ab", "c"]
    counts = Counter(b"aab" + "é".encode())
    n = sum(counts.values())
    expected = -sum(math.log2((counts[b] + 1) / (n + 256)) for b in b"abc") / 3
    assert baseline.unigram_bits_per_byte(train, val) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="no bytes"):
        baseline.unigram_bits_per_byte(train, [""])


def test_unigram_bits_per_byte_approaches_entropy():
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.25, 0.125, 0.125])
    text = "".join(rng.choice(list("abcd"), size=200_000, p=p))
    entropy = float(-(p * np.log2(p)).sum())
    assert baseline.unigram_bits_per_byte([text], [text]) == pytest.approx(entropy, abs=0.01)


def test_stdlib_baseline(stdlib_config):
    bpb = baseline.byte_unigram_baseline(stdlib_config)
    assert 3.5 < bpb < 6.0
