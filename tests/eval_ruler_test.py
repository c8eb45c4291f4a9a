"""RULER-style suite: every generator (fit, answer placement, seeding), RULER's two metrics on
hand-computed cases, the sweep's rows and resume, and bad input."""

import collections
import re

import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.data.tokenizers import ByteTokenizer
from longctx_jax.eval.report import write_report
from longctx_jax.eval.results import ResultStore
from longctx_jax.eval.ruler import (
    TASKS,
    ruler_example,
    ruler_sweep,
    score_output,
    string_match_all,
    string_match_part,
)
from longctx_jax.eval.suite import SuiteSpec, evaluate_method

TOK = ByteTokenizer()
UNIT = len(" The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.")


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("length", [1024, 4096])
def test_prompt_fits_the_length(task, length):
    e = ruler_example(TOK, task, length, seed=0, trial=0)
    used = len(e.prompt) + e.max_new_tokens
    assert used <= length
    # filled to within one context unit (a noise sentence group / a list item / a Zipf step)
    if task in ("cwe", "fwe"):  # filled to within a few list items / Zipf steps
        assert used > length - {"cwe": 3 * 12, "fwe": 4 * 7}[task], (used, length)
    else:  # the noise is cut to fill the length exactly
        assert used == length
    assert e.prompt.dtype == np.int32 and len(e.references) >= 1


@pytest.mark.parametrize("task", list(TASKS))
def test_seeded_reproducible_and_trials_differ(task):
    a = ruler_example(TOK, task, 2048, seed=1, trial=0)
    b = ruler_example(TOK, task, 2048, seed=1, trial=0)
    c = ruler_example(TOK, task, 2048, seed=1, trial=1)
    d = ruler_example(TOK, task, 2048, seed=2, trial=0)
    np.testing.assert_array_equal(a.prompt, b.prompt)
    assert a.references == b.references
    assert a.references != c.references and a.references != d.references


NEEDLE = re.compile(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.")


@pytest.mark.parametrize("task, keys, values, queries", [
    ("niah_single", 1, 1, 1), ("niah_multikey", 4, 1, 1), ("niah_multivalue", 1, 4, 1),
    ("niah_multiquery", 4, 1, 4)])
def test_niah_needles_and_question(task, keys, values, queries):
    e = ruler_example(TOK, task, 3000, seed=0, trial=3)
    text = TOK.decode(e.prompt)
    needles = NEEDLE.findall(text)
    assert len(needles) == keys * values and len({k for k, _ in needles}) == keys
    asked = re.search(r"What are all the special magic numbers for (.+?) mentioned", text).group(1)
    queried = [k for k, _ in needles if k in asked]
    assert len(set(queried)) == queries
    assert sorted(e.references) == sorted(v for k, v in needles if k in queried)
    # the needles sit inside the haystack, between the instruction and the question
    assert text.index("afterwards.\n") < text.index(needles[0][1]) < text.index("What are all")
    assert text.endswith("mentioned in the provided text are")


def test_needle_depths_vary_across_trials():
    starts = {TOK.decode(ruler_example(TOK, "niah_single", 4096, trial=t).prompt).index("One of the special")
              for t in range(6)}
    assert len(starts) >= 4


def test_vt_chain_in_order_and_answer_count():
    e = ruler_example(TOK, "vt", 2048, seed=0, trial=0)
    text = TOK.decode(e.prompt)
    names = e.references
    value = re.search(rf"VAR {names[0]} = (\d{{5}})\.", text).group(1)
    positions = [text.index(f"VAR {names[0]} = {value}.")]
    for prev, name in zip(names, names[1:], strict=False):
        positions.append(text.index(f"VAR {name} = VAR {prev}."))
    assert positions == sorted(positions) and len(names) == 5
    assert text.endswith(f"5 variables are assigned the value {value}, they are:")


@pytest.mark.parametrize("length, freq_cw, freq_ucw", [(1024, 2, 1), (4096, 30, 3)])
def test_cwe_counts(length, freq_cw, freq_ucw):
    e = ruler_example(TOK, "cwe", length, seed=0, trial=0)
    text = TOK.decode(e.prompt)
    items = re.findall(r"\n(\d+)\. ([a-z]{6})", text)
    assert [int(i) for i, _ in items] == list(range(1, len(items) + 1))
    counts = collections.Counter(w for _, w in items)
    assert {counts[w] for w in e.references} == {freq_cw} and len(e.references) == 10
    assert {c for w, c in counts.items() if w not in e.references} == {freq_ucw}
    assert "What are the 10 most common words" in text


def test_fwe_references_are_the_three_most_frequent_words():
    e = ruler_example(TOK, "fwe", 4096, seed=0, trial=0)
    body = TOK.decode(e.prompt).split("coded words.")[1].split("\nQuestion:")[0]
    counts = collections.Counter(w for w in body.split() if w != "....")
    top = counts.most_common(4)
    assert tuple(w for w, _ in top[:3]) == e.references
    assert top[2][1] > top[3][1]  # the answer is unambiguous
    assert body.split().count("....") > top[0][1]  # the dots are the noise word, ranked first


def test_string_match_all_and_part_hand_cases():
    refs = ["1234567", "ABCDE", "7654321"]
    out = "The numbers are 1234567 and abcde."
    assert string_match_all(out, refs) == pytest.approx(2 / 3, abs=1e-12)
    assert string_match_part(out, refs) == 1.0
    assert string_match_all("nothing", refs) == 0.0 and string_match_part("nothing", refs) == 0.0
    assert string_match_all("7654321, 1234567, abcde", refs) == 1.0
    assert score_output("niah_multivalue", "1234567", refs[:2]) == 0.5
    with pytest.raises(ValueError, match="at least one reference"):
        string_match_all("x", [])


def test_bad_input_names_the_value_and_the_valid_ones():
    unknown = r"unknown ruler task\(s\) \['niah_singel'\]; valid: \('niah_single'"
    with pytest.raises(ValueError, match=unknown):
        ruler_example(TOK, "niah_singel", 4096)
    short = r"length 200 is too short for ruler task 'vt': it needs at least \d+"
    with pytest.raises(ValueError, match=short):
        ruler_example(TOK, "vt", 200)
    for task in TASKS:
        with pytest.raises(ValueError, match=rf"too short for ruler task '{task}'.*valid lengths: >= \d+"):
            ruler_example(TOK, task, 300)
    with pytest.raises(ValueError, match="valid:"):
        SuiteSpec.from_mapping({"ruler_tasks": ("cwe", "qa")})
    with pytest.raises(ValueError, match="got the string"):
        ruler_sweep(None, TOK, None, method="m", tasks="cwe", lengths=[1024], trials=1)


def test_too_short_message_gives_a_length_that_works():
    with pytest.raises(ValueError) as info:
        ruler_example(TOK, "niah_multiquery", 400)
    minimum = int(re.search(r"at least (\d+)", str(info.value)).group(1))
    e = ruler_example(TOK, "niah_multiquery", minimum)
    assert len(e.prompt) + e.max_new_tokens <= minimum


def scripted_model(prompt_len: int, reply: str):
    """A logits callable that continues any prompt of `prompt_len` tokens with `reply`, then EOS."""
    ids = np.asarray(TOK.encode(reply) + [TOK.eos_id], np.int32)

    def fn(tokens_BT, positions_BT):
        t = jnp.arange(tokens_BT.shape[1]) - (prompt_len - 1)
        nxt = jnp.where((t >= 0) & (t < len(ids)), jnp.asarray(ids)[jnp.clip(t, 0, len(ids) - 1)], 0)
        return jnp.broadcast_to(jnp.eye(TOK.vocab_size)[nxt], tokens_BT.shape + (TOK.vocab_size,))

    return fn


def test_sweep_scores_stores_misses_and_resumes(tmp_path):
    e = ruler_example(TOK, "niah_multivalue", 1024, seed=0, trial=0)
    model = scripted_model(len(e.prompt), f" {e.references[0]} and {e.references[2]}.")
    store = ResultStore(tmp_path / "r.json")
    [rec] = ruler_sweep(model, TOK, store, method="m", tasks=["niah_multivalue"], lengths=[1024], trials=1,
                        progress=False)
    assert rec["score"] == 0.5 and rec["scores"] == [0.5] and rec["metric"] == "string_match_all"
    assert rec["misses"] == [{"trial": 0, "references": list(e.references),
                              "generated": f" {e.references[0]} and {e.references[2]}."}]  # EOS cut

    def must_not_run(tokens_BT, positions_BT):
        raise AssertionError("a finished cell was recomputed")

    assert ruler_sweep(must_not_run, TOK, ResultStore(tmp_path / "r.json"), method="m",
                       tasks=["niah_multivalue"], lengths=[1024], trials=1, progress=False) == []


def test_suite_runs_ruler_from_the_spec_and_reports_it(tmp_path):
    e = ruler_example(TOK, "niah_single", 1024, seed=0, trial=0)
    model = scripted_model(len(e.prompt), f" {e.references[0]}. And then more text that never ends")
    store = ResultStore(tmp_path / "r.json")
    spec = SuiteSpec.from_mapping({"ruler_tasks": ["niah_single"], "ruler_lengths": [1024],
                                   "ruler_trials": 1})
    evaluate_method(model, TOK, store, method="oracle", spec=spec, progress=False)
    [row] = store.records("ruler")
    assert row["score"] == 1.0 and row["misses"] == [] and row["task"] == "niah_single"
    write_report(store.data, tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text()
    assert "| niah_single | oracle | 1.00 (n=1) |" in report
    assert "| **mean** | oracle | 1.00 (1 tasks) |" in report


def test_suite_refuses_a_too_short_ruler_length_before_any_work(tmp_path):
    def must_not_run(tokens_BT, positions_BT):
        raise AssertionError("the model ran before the spec was checked")

    spec = SuiteSpec(ppl_lengths=(256,), ruler_tasks=("cwe",), ruler_lengths=(4096, 200))
    with pytest.raises(ValueError, match="length 200 is too short for ruler task 'cwe'"):
        evaluate_method(must_not_run, TOK, ResultStore(tmp_path / "r.json"), method="m", spec=spec,
                        progress=False)
