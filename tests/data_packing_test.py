"""Packing: windows checked against a plain-Python reference and against packing invariants."""

import chex
import numpy as np
import pytest

from longctx_jax.data import packing
from longctx_jax.data.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
TEXTS = [
    "def f(x):\n    return x + 1\n",
    "ü",
    "a much longer document " * 9,
    "Ελληνικά and 🙂",
    "z",
    "short",
]


def reference_windows(texts, order, seq_len):
    """Every window of the stream, written with Python lists and loops only."""
    stream = []  # (token, document rank in the stream)
    for rank, d in enumerate(order):
        ids = [TOK.bos_id, *texts[d].encode("utf-8"), TOK.eos_id]
        stream += [(t, rank) for t in ids]
    windows = []
    start = 0
    while True:
        piece = stream[start : start + seq_len + 1]
        piece += [(TOK.pad_id, None)] * (seq_len + 1 - len(piece))
        seg, pos, seg_ids, positions = 0, 0, [], []
        for i, (_, rank) in enumerate(piece):
            if rank is None:
                seg_ids.append(0)
                positions.append(0)
                continue
            if i == 0 or rank != piece[i - 1][1]:
                seg, pos = seg + 1, 0
            seg_ids.append(seg)
            positions.append(pos)
            pos += 1
        mask = [float(piece[i][1] is not None and piece[i][1] == piece[i + 1][1]) for i in range(seq_len)]
        targets = [t for t, _ in piece[1:]]
        windows.append(
            {
                "inputs": [t for t, _ in piece[:-1]],
                "targets": targets,
                "positions": positions[:-1],
                "segment_ids": seg_ids[:-1],
                "loss_mask": mask,
                "target_bytes": [int(m) * (1 if t < 256 else 0) for t, m in zip(targets, mask, strict=True)],
            }
        )
        start += seq_len
        if start + 1 >= len(stream):
            return windows


@pytest.fixture(scope="module")
def docs():
    return packing.tokenize_documents(TEXTS, TOK)


def test_tokenize_documents(docs):
    assert docs.num_docs == len(TEXTS)
    assert docs.tokens.dtype == np.uint16
    for d, text in enumerate(TEXTS):
        assert docs.doc(d).tolist() == [TOK.bos_id, *text.encode("utf-8"), TOK.eos_id]


@pytest.mark.parametrize("seq_len", [1, 2, 7, 32, 500])
@pytest.mark.parametrize("order_seed", [None, 0, 1])
def test_matches_reference(docs, seq_len, order_seed):
    order = np.arange(len(TEXTS))
    if order_seed is not None:
        order = np.random.default_rng(order_seed).permutation(len(TEXTS))
    expected = reference_windows(TEXTS, order, seq_len)
    n = packing.num_windows(docs.num_tokens, seq_len)
    assert n == len(expected)
    got = packing.pack_windows(docs, order, np.arange(n), seq_len, TOK.pad_id, TOK.token_bytes)
    assert set(got) == set(packing.BATCH_KEYS)
    for key in packing.BATCH_KEYS:
        chex.assert_shape(got[key], (n, seq_len))
        want = np.array([w[key] for w in expected], got[key].dtype)
        np.testing.assert_array_equal(got[key], want, err_msg=key)
    # Any subset of windows, in any order, is the same rows.
    pick = np.random.default_rng(3).integers(0, n, size=5)
    again = packing.pack_windows(docs, order, pick, seq_len, TOK.pad_id, TOK.token_bytes)
    chex.assert_trees_all_equal(again, {k: v[pick] for k, v in got.items()})


@pytest.mark.parametrize("seq_len", [3, 16, 64])
def test_invariants(docs, seq_len):
    order = np.random.default_rng(seq_len).permutation(len(TEXTS))
    n = packing.num_windows(docs.num_tokens, seq_len)
    b = packing.pack_windows(docs, order, np.arange(n), seq_len, TOK.pad_id, TOK.token_bytes)
    chex.assert_type([b["inputs"], b["targets"], b["positions"], b["segment_ids"]], np.int32)
    chex.assert_type(b["loss_mask"], np.float32)
    # Targets are inputs shifted by one, also across windows (stride T, overlap 1).
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    np.testing.assert_array_equal(b["inputs"][1:, 0], b["targets"][:-1, -1])
    pad = b["segment_ids"] == 0
    assert np.all(b["inputs"][pad] == TOK.pad_id) and np.all(b["positions"][pad] == 0)
    assert not pad[:-1].any(), "only the last window may hold padding"
    # Segment ids start at 1 and step by one exactly where positions restart.
    seg, pos = b["segment_ids"], b["positions"]
    assert np.all(seg[:, 0] == 1) and np.all(pos[:, 0] == 0)
    step = np.diff(seg, axis=1)
    live = ~pad[:, 1:]
    assert set(np.unique(step[live])) <= {0, 1}
    np.testing.assert_array_equal((step == 1)[live], (pos[:, 1:] == 0)[live])
    np.testing.assert_array_equal(pos[:, 1:][live & (step == 0)], (pos[:, :-1] + 1)[live & (step == 0)])
    # A new document starts with bos at position 0 unless the window cut it.
    assert np.all(b["inputs"][:, 1:][live & (step == 1)] == TOK.bos_id)
    # Loss mask is zero exactly on eos -> bos and on padded targets.
    boundary = (b["inputs"] == TOK.eos_id) | (b["targets"] == TOK.pad_id)
    np.testing.assert_array_equal(b["loss_mask"] == 0, boundary)
    # Per epoch every byte is a target exactly once: target bytes sum to the corpus size.
    assert b["target_bytes"].sum() == sum(len(t.encode("utf-8")) for t in TEXTS)
    assert b["loss_mask"].sum() == docs.num_tokens - len(TEXTS)


def test_long_document_splits_across_windows():
    text = "x" * 100
    docs = packing.tokenize_documents([text], TOK)
    b = packing.pack_windows(docs, [0], np.arange(4), 30, TOK.pad_id, TOK.token_bytes)
    np.testing.assert_array_equal(b["segment_ids"][:3], 1)
    np.testing.assert_array_equal(b["positions"][:3], np.tile(np.arange(30), (3, 1)))
    assert b["inputs"][0, 0] == TOK.bos_id and b["inputs"][1, 0] == ord("x")
    assert b["loss_mask"][:3].all()
    # 102 tokens: window 3 holds the stream's last 12 inputs, then padding.
    np.testing.assert_array_equal(b["segment_ids"][3], [1] * 12 + [0] * 18)
    assert b["targets"][3, 10] == TOK.eos_id and b["loss_mask"][3].sum() == 11


def test_errors(docs):
    with pytest.raises(ValueError, match="window ids"):
        packing.pack_windows(docs, np.arange(len(TEXTS)), [10**6], 8, TOK.pad_id, TOK.token_bytes)
    with pytest.raises(ValueError, match="seq_len"):
        packing.num_windows(10, 0)
    with pytest.raises(ValueError, match="at least one"):
        packing.tokenize_documents([], TOK)
    with pytest.raises(ValueError, match="2 tokens"):
        packing.TokenizedDocs(tokens=np.zeros(3, np.int32), starts=np.array([0, 1, 3]))


def test_save_load_round_trip(docs, tmp_path):
    path = str(tmp_path / "sub" / "docs.npz")
    docs.save(path)
    loaded = packing.TokenizedDocs.load(path)
    chex.assert_trees_all_equal((loaded.tokens, loaded.starts), (docs.tokens, docs.starts))
