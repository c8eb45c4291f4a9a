"""Perplexity: prefix sharing is exact, the strided protocol scores each target once, resume."""

import os

import chex
import numpy as np
import pytest
from flax import nnx

from longctx_jax.data.tokenizers import ByteTokenizer, prompt_prefix
from longctx_jax.eval.corpus import (
    documents,
    long_documents,
    prose_text,
    stdlib_files,
    stdlib_root,
    token_stream,
)
from longctx_jax.eval.perplexity import document_nll, perplexity_sweep, strided_nll, strided_windows
from longctx_jax.eval.results import ResultStore
from longctx_jax.eval.scoring import EvalModel
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def model() -> EvalModel:
    cfg = ModelConfig(vocab_size=TOK.vocab_size, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2,
                      mlp_dim=64)
    return EvalModel(Decoder(cfg, rngs=nnx.Rngs(0)))


def test_corpus_is_deterministic_real_text():
    files = stdlib_files()
    assert len(files) > 10 and files == sorted(files, key=lambda p: p.as_posix())
    docs = documents(TOK, 256, 3)
    chex.assert_shape(docs, (3, 256))
    assert "def " in TOK.decode(token_stream(TOK, 20_000))
    assert "statement" in TOK.decode(docs[0])  # the prose document comes first


def test_every_document_is_the_start_of_one_whole_file():
    """The boundary rule: a perplexity row is a prefix of ONE file, never text of two files."""
    docs = long_documents(TOK, 30_000, 4)
    assert [d.kind for d in docs] == ["prose", "code", "code", "code"]
    assert TOK.decode(docs[0].ids) == prose_text()
    root = stdlib_root()
    for doc in docs[1:]:
        text = (root / doc.name).read_text(encoding="utf-8", errors="replace")
        assert TOK.decode(doc.ids) == text  # the whole file, and nothing else
    rows = documents(TOK, 30_000, 4)
    for row, doc in zip(rows, docs, strict=True):
        np.testing.assert_array_equal(row, doc.ids[:30_000])
    # skipping holds documents out without overlap
    later = long_documents(TOK, 30_000, 2, skip=2)
    assert [d.name for d in later] == [d.name for d in docs[2:4]]
    with pytest.raises(ValueError, match="fewer than"):
        long_documents(TOK, 10**9, 1)


def test_validation_split_documents_are_exactly_the_training_corpus_held_out_files():
    """A model fine-tuned on the stdlib corpus's train split is scored on files it never saw."""
    from longctx_jax.data.stdlib_corpus import list_documents, split_of, stdlib_config

    held_out = long_documents(TOK, 60_000, 2, split="validation", val_fraction=0.05)
    corpus = dict(list_documents(stdlib_config(0.05)))  # module name -> path, as the trainer reads it
    root = stdlib_root()
    by_path = {os.path.realpath(path): name for name, path in corpus.items()}
    for doc in held_out:
        name = by_path[os.path.realpath(root / doc.name)]
        assert split_of(name, 0.05) == "validation"
        assert TOK.decode(doc.ids) == (root / doc.name).read_text(encoding="utf-8", errors="replace")
    everything = [d.name for d in long_documents(TOK, 60_000, 6)]
    assert not set(everything[:2]) & {d.name for d in held_out}  # the default documents are train files
    train = long_documents(TOK, 60_000, 2, split="train", val_fraction=0.05)
    assert not {d.name for d in train} & {d.name for d in held_out}
    with pytest.raises(ValueError, match="unknown corpus split 'test'"):
        long_documents(TOK, 1000, 1, split="test")
    with pytest.raises(ValueError, match="'validation' split"):
        long_documents(TOK, 10**6, 1, split="validation")


def test_bos_starts_every_document_when_the_tokenizer_adds_one():
    class BosBytes(ByteTokenizer):
        add_bos = True

    tok = BosBytes()
    assert prompt_prefix(tok) == [tok.bos_id] and prompt_prefix(TOK) == []
    doc = long_documents(tok, 1000, 1)[0]
    assert doc.ids[0] == tok.bos_id and tok.decode(doc.ids) == prose_text()


def test_shared_prefix_equals_separate_forwards(model, tmp_path):
    store = ResultStore(tmp_path / "r.json")
    shared = perplexity_sweep(model, TOK, store, method="a", lengths=[64, 128], num_docs=2, progress=False)
    separate = perplexity_sweep(model, TOK, store, method="b", lengths=[64, 128], num_docs=2,
                                share_prefix=False, progress=False)
    assert [(r["length"], r["doc_kind"]) for r in shared] == [(64, "prose"), (64, "code"), (128, "prose"),
                                                             (128, "code")]
    for r_a, r_b in zip(shared, separate, strict=True):
        chex.assert_trees_all_close(r_a["nll"], r_b["nll"], rtol=1e-5)
        chex.assert_trees_all_close(r_a["nll_last_quarter"], r_b["nll_last_quarter"], rtol=1e-5)
    docs = documents(TOK, 129, 2)
    nll = document_nll(model, docs[:, :65])
    chex.assert_trees_all_close(shared[0]["nll_last_quarter"], float(nll[0, 48:].mean()), rtol=1e-5)
    chex.assert_trees_all_close(shared[1]["nll"], float(nll[1].mean()), rtol=1e-5)
    assert len(shared[0]["nll_by_eighth"]) == 8


def test_sweep_resumes_without_running_the_model(model, tmp_path):
    path = tmp_path / "r.json"
    first = perplexity_sweep(model, TOK, ResultStore(path), method="none", lengths=[64], progress=False)

    def must_not_run(tokens_BT, positions_BT):
        raise AssertionError("a finished cell was recomputed")

    again = ResultStore(path)
    assert perplexity_sweep(must_not_run, TOK, again, method="none", lengths=[64], progress=False) == []
    new = perplexity_sweep(model, TOK, again, method="none", lengths=[64, 128], progress=False)
    assert [r["length"] for r in new] == [128]  # one document by default
    assert ResultStore(path).records("perplexity")[0] == first[0]


@pytest.mark.parametrize("L,window,stride", [(100, 32, 8), (64, 64, 16), (50, 16, 16), (10, 32, 4)])
def test_strided_windows_score_every_target_once(L, window, stride):
    counts = np.zeros(L, int)
    for begin, end, first in strided_windows(L, window, stride):
        assert end - begin <= window and begin <= first <= end
        counts[first:end] += 1
    np.testing.assert_array_equal(counts, np.ones(L, int))


def test_strided_nll_against_reference_loop(model):
    doc = documents(TOK, 97, 1)[0]
    window, stride = 32, 8
    # reference: one forward per window, written from the protocol's definition
    total, prev_end = 0.0, 0
    for begin in range(0, 96, stride):
        end = min(begin + window, 96)
        nll = model.token_nll(doc[None, begin:end], doc[None, begin + 1 : end + 1])[0]
        total += float(nll[prev_end - begin :].sum())
        prev_end = end
        if end == 96:
            break
    got = strided_nll(model, doc, window=window, stride=stride, batch_size=4)
    chex.assert_trees_all_close(got, total / 96, rtol=1e-5)
    full = float(document_nll(model, doc[None, :65]).mean())
    chex.assert_trees_all_close(strided_nll(model, doc[:65], window=64, stride=16), full, rtol=1e-5)
    with pytest.raises(ValueError, match="stride"):
        strided_windows(10, 4, 8)
