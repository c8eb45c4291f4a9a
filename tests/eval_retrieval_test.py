"""Passkey and needle prompts: exact needle depth, lengths, seeding; sweep scoring and resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.data.tokenizers import ByteTokenizer
from longctx_jax.eval.corpus import token_stream
from longctx_jax.eval.needle import needle_example, needle_sweep
from longctx_jax.eval.passkey import FILLER, passkey_example, passkey_sweep
from longctx_jax.eval.results import ResultStore
from longctx_jax.eval.retrieval import example_rng

TOK = ByteTokenizer()
DEPTHS = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("length", [512, 1000])
def test_passkey_needle_at_requested_depth(length, depth):
    ex = passkey_example(TOK, length, depth, example_rng(0, length, depth, 0))
    assert len(ex.tokens) - 1 <= length
    unit = len(TOK.encode(" " + FILLER))
    assert len(ex.tokens) - 1 > length - unit  # filled to within one filler sentence
    assert abs(ex.depth - depth) <= 0.5 * unit / ex.haystack_length + 1e-9
    text = TOK.decode(ex.tokens)
    assert text.startswith("There is an important info hidden")
    needle = f" The pass key is {ex.answer}. Remember it. {ex.answer} is the pass key."
    assert TOK.decode(ex.tokens[ex.needle_start :]).startswith(needle)
    assert TOK.decode(ex.tokens[: ex.answer_start]).endswith("What is the pass key? The pass key is")
    assert TOK.decode(ex.tokens[ex.answer_start :]) == " " + ex.answer and len(ex.answer) == 5


@pytest.mark.parametrize("depth", DEPTHS)
def test_needle_at_requested_depth_in_real_text(depth):
    length = 700
    ex = needle_example(TOK, length, depth, example_rng(0, length, depth, 1), trial=1)
    assert len(ex.tokens) - 1 == length
    assert ex.needle_start - ex.haystack_start == round(depth * ex.haystack_length)
    assert abs(ex.depth - depth) <= 0.5 / ex.haystack_length
    needle = f"\nThe special magic number is {ex.answer}.\n"
    assert TOK.decode(ex.tokens[ex.needle_start :]).startswith(needle)
    haystack = token_stream(TOK, length + ex.haystack_length)[length:]
    before = ex.tokens[ex.haystack_start : ex.needle_start]
    np.testing.assert_array_equal(before, haystack[: len(before)])


def test_prompts_are_seeded():
    a = passkey_example(TOK, 512, 0.5, example_rng(3, 512, 0.5, 0))
    b = passkey_example(TOK, 512, 0.5, example_rng(3, 512, 0.5, 0))
    c = passkey_example(TOK, 512, 0.5, example_rng(3, 512, 0.5, 1))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.answer != c.answer
    with pytest.raises(ValueError, match="too short"):
        passkey_example(TOK, 100, 0.5, example_rng(0, 100, 0.5, 0))


def induction_model(tokens_BT, positions_BT, k: int = 12):
    """A causal copy model: predicts the token that followed the last earlier match of the
    current k-token suffix (an induction head). It retrieves any needle whose lead-in the
    question repeats, so it must score 1.0 on every cell."""
    T = tokens_BT.shape[1]
    eq = tokens_BT[:, :, None] == tokens_BT[:, None, :]
    match = eq
    for j in range(1, k):
        match = match & jnp.pad(eq, ((0, 0), (j, 0), (j, 0)))[:, :T, :T]
    idx = jnp.arange(T)
    last = jnp.max(jnp.where(match & (idx[None, None, :] < idx[None, :, None]), idx, -1), axis=-1)
    nxt = jnp.take_along_axis(tokens_BT, jnp.clip(last + 1, 0, T - 1), axis=1)
    return jax.nn.one_hot(jnp.where(last >= 0, nxt, 0), TOK.vocab_size)


def constant_model(tokens_BT, positions_BT):
    return jax.nn.one_hot(jnp.zeros_like(tokens_BT), TOK.vocab_size)


def test_sweep_scores_and_resumes(tmp_path):
    path = tmp_path / "r.json"
    kw = dict(lengths=[512, 640], depths=[0.0, 0.5, 1.0], trials=2, progress=False, batch_tokens=1024)
    perfect = passkey_sweep(induction_model, TOK, ResultStore(path), method="copy", **kw)
    assert len(perfect) == 6 and all(r["accuracy"] == 1.0 for r in perfect)
    store = ResultStore(path)
    zero = passkey_sweep(constant_model, TOK, store, method="const", **kw)
    assert all(r["accuracy"] == 0.0 for r in zero)

    def must_not_run(tokens_BT, positions_BT):
        raise AssertionError("a finished cell was recomputed")

    assert passkey_sweep(must_not_run, TOK, ResultStore(path), method="const", **kw) == []
    recs = ResultStore(path).records("passkey")
    assert {(r["method"], r["length"], r["depth"]) for r in recs} == {
        (m, n, d) for m in ("copy", "const") for n in (512, 640) for d in (0.0, 0.5, 1.0)}
    for fn, want in ((induction_model, 1.0), (constant_model, 0.0)):
        recs = needle_sweep(fn, TOK, store, method=str(want), lengths=[512], depths=[0.0, 0.5, 1.0], trials=2,
                            progress=False)
        assert [r["accuracy"] for r in recs] == [want] * 3


class _BosBytes(ByteTokenizer):
    add_bos = True


@pytest.mark.parametrize("task", ["passkey", "needle", "niah_single", "vt", "cwe", "fwe"])
def test_prompts_start_with_bos_when_the_tokenizer_adds_one(task):
    """The BOS rule of generation (`data.tokenizers.prompt_prefix`) holds for every prompt builder."""
    from longctx_jax.eval.ruler import ruler_example

    tok, length = _BosBytes(), 4096
    for t in (tok, ByteTokenizer()):
        if task == "passkey":
            ids = passkey_example(t, length, 0.5, example_rng(0, length, 0.5, 0)).tokens
            assert len(ids) - 1 <= length
        elif task == "needle":
            ids = needle_example(t, length, 0.5, example_rng(0, length, 0.5, 0)).tokens
            assert len(ids) - 1 <= length
        else:
            ex = ruler_example(t, task, length)
            ids = ex.prompt
            assert len(ids) + ex.max_new_tokens <= length
        assert (ids[0] == tok.bos_id) == (t is tok)
