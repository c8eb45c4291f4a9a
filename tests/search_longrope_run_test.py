"""The LongRoPE run: disjoint search / test documents, the controls, held-out scores and the verdict rule."""

import json
import math

import chex
import numpy as np
import pytest
from flax import nnx

from configs import longrope_search_smollm2
from longctx_jax.data.tokenizers import ByteTokenizer
from longctx_jax.eval import methods
from longctx_jax.losses import token_nll
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.search import longrope, longrope_claim, longrope_run

TOK = ByteTokenizer()
CFG = ModelConfig(vocab_size=TOK.vocab_size, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  mlp_dim=128, rope_theta=1000.0, init_std=0.1, attention_impl="dense")
RULE = dict(longrope_search_smollm2.get_config().verdict_rule)


def _tiny_config(tmp_path, **changes):
    config = longrope_search_smollm2.get_config("cpu")
    config.workdir = str(tmp_path / "run")
    config.original_length = 16  # target 32 tokens: a byte tokenizer's documents are long enough
    config.n_hat_choices = (0, 2, 4)
    config.search_doc_skip, config.num_search_docs = 0, 2
    config.test_doc_skip, config.num_test_docs = 2, 2
    config.population_size, config.num_parents, config.generations, config.chunk = 4, 2, 2, 2
    config.compare_methods = ("linear", "ntk", "yarn", "yarn_longrope_temperature", "longrope_phi3")
    config.verdict_rule.block = 8
    config.verdict_rule.resamples = 200
    for key, value in changes.items():
        config[key] = value
    return config


@pytest.mark.parametrize("skips, match", [
    ((0, 2, 1, 2), "overlap at \\[1\\]"),
    ((3, 2, 0, 4), "overlap at \\[3\\]"),
])
def test_overlapping_document_ranges_are_refused_before_any_work(tmp_path, skips, match):
    config = _tiny_config(tmp_path)
    config.search_doc_skip, config.num_search_docs, config.test_doc_skip, config.num_test_docs = skips
    with pytest.raises(ValueError, match=match):
        longrope_run.run_longrope_search(config, loaded=(None, None))  # refused before the model is touched


def test_bad_compare_methods_and_rules_are_refused(tmp_path):
    config = _tiny_config(tmp_path, compare_methods=("linear", "longrope"))
    with pytest.raises(ValueError, match="not comparable \\['longrope'\\]"):
        longrope_run.check_search_config(config)
    config = _tiny_config(tmp_path, compare_methods=("linear", "ntk"))
    with pytest.raises(ValueError, match="controls \\['yarn', 'yarn_longrope_temperature'\\] are not in"):
        longrope_run.check_search_config(config)
    with pytest.raises(ValueError, match="unknown fields \\['treshold'\\]"):
        longrope_claim.check_rule({**RULE, "treshold": 1.0})
    with pytest.raises(ValueError, match="controls"):
        longrope_claim.check_rule({**RULE, "controls": ("linear", "pi")})
    with pytest.raises(ValueError, match="confidence"):
        longrope_claim.check_rule({**RULE, "confidence": 95})


def test_selected_documents_are_disjoint_by_name(tmp_path):
    config = _tiny_config(tmp_path)
    search, test = longrope_run.select_documents(TOK, 32, config)
    assert len(search) == 2 and len(test) == 2
    assert not {d.name for d in search} & {d.name for d in test}
    assert all(d.ids.shape[0] >= 33 for d in search + test)


@pytest.mark.parametrize("method", [
    "longrope_phi3",
    pytest.param("linear", marks=pytest.mark.slow),
    pytest.param("yarn_longrope_temperature", marks=pytest.mark.slow),
])
def test_token_nll_with_frequencies_matches_the_configured_decoder(method):
    """The one scoring path equals a Decoder built with the method's rope_scaling."""
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    space = longrope.SearchSpace(rotary_dim=CFG.head_dim, base=CFG.rope_theta, original_length=16, factor=2.0)
    docs = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 33)).astype(np.int32)
    inv_freq, attention = longrope_run.method_frequencies(method, space)
    got = longrope_run.token_nll_with_frequencies(model, docs, inv_freq, attention_factor=attention)
    changes = methods.config_changes(method, factor=2.0, train_length=16, rotary_dim=CFG.head_dim)
    ref_model = methods.with_config(model, **changes)
    want = np.asarray(token_nll(nnx.jit(lambda m, x: m(x))(ref_model, docs[:, :-1]), docs[:, 1:]))
    chex.assert_shape(got, (2, 32))
    chex.assert_trees_all_close(got, want, atol=1e-4, rtol=1e-4)




def test_run_writes_disjoint_sets_controls_and_a_verdict_by_the_rule(tmp_path):
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    config = _tiny_config(tmp_path)
    summary = longrope_run.run_longrope_search(config, loaded=(model, TOK))
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert len(summary["search_documents"]) == 2 and len(summary["test_documents"]) == 2
    assert not set(summary["search_documents"]) & set(summary["test_documents"])
    tested = summary["test"]["methods"]
    assert set(tested) == {"search", *config.compare_methods}
    assert all(r["ppl_lo"] <= r["ppl"] <= r["ppl_hi"] for r in tested.values())
    # The verdict in the JSON is the rule applied to the JSON's own comparisons.
    rule, comparisons = summary["verdict_rule"], summary["test"]["comparisons"]
    assert summary["verdict"] == longrope_claim.verdict(rule, comparisons)
    assert summary["verdict"]["verdict"] in longrope_claim.VERDICTS
    # Held-out scores are the mean of the stored blocks; the ratio is the ppl ratio.
    blocks = json.loads((tmp_path / "run" / "test_blocks.json").read_text())
    assert blocks["inputs"]["test_documents"] == summary["test_documents"]
    for name in ("search", "yarn"):
        mean = np.mean([np.mean(b) for b in blocks["blocks"][name]])
        assert tested[name]["ppl"] == pytest.approx(math.exp(mean), rel=1e-9)
    yarn = summary["test"]["comparisons"]["yarn"]
    assert yarn["ppl_ratio"] == pytest.approx(tested["search"]["ppl"] / tested["yarn"]["ppl"], rel=1e-9)
    # The docs' check: the stored blocks and rule give the stored comparisons and verdict again,
    # and the rendered block states that verdict and every method's interval.
    fresh = longrope_claim.recompute(summary, blocks["blocks"])
    assert fresh["verdict"] == summary["verdict"]
    for control, c in fresh["comparisons"].items():
        assert c == pytest.approx(comparisons[control], rel=1e-9, abs=1e-12)
    text = longrope_claim.report(summary)
    assert f"**Verdict: {summary['verdict']['verdict']}**" in text
    assert all(f"`{m}`" in text for m in config.compare_methods) and "searched factors" in text
    # A rerun resumes both stages: same summary apart from the wall time and when it was written.
    again = longrope_run.run_longrope_search(config, loaded=(model, TOK))
    when = ("seconds_this_run", "measured_utc")
    assert ({k: v for k, v in again.items() if k not in when}
            == {k: v for k, v in summary.items() if k not in when})
    assert len(summary["git_commit"]) == 40 or summary["git_commit"] == "unknown"


def _comparison(diff, lo, hi):
    return {"nll_diff": diff, "nll_diff_lo": lo, "nll_diff_hi": hi, "ppl_ratio": math.exp(diff),
            "ppl_ratio_lo": math.exp(lo), "ppl_ratio_hi": math.exp(hi)}


@pytest.mark.parametrize("diffs, expected", [
    ({"linear": (-0.5, -0.6, -0.4), "ntk": (-0.1, -0.2, -0.01)}, "yes"),
    ({"linear": (-0.5, -0.6, -0.4), "ntk": (-0.1, -0.2, 0.05)}, "undecided"),
    ({"linear": (-0.5, -0.6, -0.4), "ntk": (0.0, -0.1, 0.1)}, "no"),  # the winner IS the control
    ({"linear": (0.2, 0.1, 0.3), "ntk": (-0.1, -0.2, -0.01)}, "no"),
])
def test_verdict_rule(diffs, expected):
    rule = {**RULE, "controls": ("linear", "ntk")}
    comparisons = {c: _comparison(*v) for c, v in diffs.items()}
    assert longrope_claim.verdict(rule, comparisons)["verdict"] == expected
    with pytest.raises(ValueError, match="no comparison for the rule's controls \\['yarn'\\]"):
        longrope_claim.verdict({**RULE, "controls": ("linear", "yarn")}, comparisons)
    # A margin turns a small gain into "no".
    if expected == "yes":
        assert longrope_claim.verdict({**rule, "margin": 0.2}, comparisons)["verdict"] == "no"


def test_compare_is_a_paired_difference():
    rng = np.random.default_rng(0)
    control = [rng.normal(3.0, 0.5, 20), rng.normal(2.0, 0.5, 12)]
    winner = [c - 0.1 for c in control]  # exactly 0.1 nats lower in every block
    got = longrope_claim.compare(winner, control, confidence=0.95, resamples=300, seed=0)
    for key in ("nll_diff", "nll_diff_lo", "nll_diff_hi"):
        assert got[key] == pytest.approx(-0.1, abs=1e-12)
    assert got["ppl_ratio"] == pytest.approx(math.exp(-0.1), abs=1e-12)
    with pytest.raises(ValueError, match="differ per document"):
        longrope_claim.compare(winner, [control[0]], confidence=0.95, resamples=10, seed=0)
