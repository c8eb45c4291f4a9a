"""The fine-tuning claims driver (`eval/finetune_claims.py`): real tiny fine-tunes, seeds, controls,
cached scores, verdicts by the shared rules, and bad configs refused before any training."""

import copy
import json
import os

import numpy as np
import pytest

from longctx_jax import config_cli
from longctx_jax.eval import claims, finetune_claims
from longctx_jax.eval.reproduction import block_series, target_nll
from longctx_jax.models.config import ModelConfig
from longctx_jax.train.runs import FinetunedRuns

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def _config(workdir):
    config = config_cli.load_config(os.path.join(CONFIGS, "repro_smollm2.py:smoke"))
    config.workdir = str(workdir)
    return config


class _CountingRuns(FinetunedRuns):
    def __init__(self):
        super().__init__(CONFIGS)
        self.trained = []

    def train(self, config):
        self.trained.append(config.workdir)
        return super().train(config)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("repro_smollm2")
    runs = _CountingRuns()
    result = finetune_claims.run_claim(_config(workdir), runs, name="smollm2_finetune", size="smoke",
                                       spec="repro_smollm2:smoke")
    return workdir, runs, result


def test_smoke_result_holds_every_seed_series_and_verdict(smoke):
    workdir, runs, result = smoke
    assert result["seeds"] == [0, 1] and result["train_len"] == 128
    assert sorted(result["series"]) == sorted(f"{r}{s}/full@{k}L" for r in ("pi", "yarn")
                                              for s in ("_finetuned", "_no_finetune") for k in (1, 2))
    for key, by_seed in result["series"].items():
        assert sorted(by_seed) == ["0", "1"]
        for docs in by_seed.values():
            assert len(docs) == 2 and all(len(b) == int(key[-2]) * 128 // 32 for b in docs.values())
    # the untrained control is one model: the same under every seed, summarized from one copy
    assert result["seed_independent"] == sorted(k for k in result["series"] if "_no_finetune" in k)
    for key in result["seed_independent"]:
        assert result["series"][key]["0"] == result["series"][key]["1"]
        assert result["summaries"][key]["seeds"] == 1
    # the fine-tunes differ by seed, from each other and from their controls
    ft = result["series"]["pi_finetuned/full@2L"]
    assert ft["0"] != ft["1"] and ft["0"] != result["series"]["pi_no_finetune/full@2L"]["0"]
    assert result["series"]["pi_finetuned/full@2L"] != result["series"]["yarn_finetuned/full@2L"]
    assert [c["name"] for c in result["claims"]] == ["yarn_vs_pi_finetuned", "pi_finetune", "yarn_finetune"]
    claims.check_consistent(result)
    json.dumps(result)
    assert sorted(result["runs"]) == ["pi_finetuned", "yarn_finetuned"]
    for by_seed in result["runs"].values():
        assert sorted(by_seed) == ["0", "1"] and all(r["steps"] == 3 for r in by_seed.values())
    assert len(runs.trained) == 4 and len(set(runs.trained)) == 4  # 2 runs x 2 seeds, own workdirs
    for path in runs.trained:
        assert os.path.exists(os.path.join(path, "summary.json"))


def test_one_forward_slices_equal_a_forward_at_the_shorter_length(smoke):
    workdir, _, result = smoke
    config = FinetunedRuns(CONFIGS).config("finetune_smollm2:tiny", 1, {"train": {"steps": 3, "eval_every": 3,
                                           "checkpoint_every": 2}}, os.path.join(workdir, "pi", "seed1"))
    module, tokenizer, _ = FinetunedRuns(CONFIGS).load(config)
    from longctx_jax.eval.corpus import long_documents

    docs = long_documents(tokenizer, 2 * 128 + 1, 2, split="validation", val_fraction=0.05)
    windows = np.stack([d.ids[:257] for d in docs]).astype(np.int32)
    direct = block_series(target_nll(module, windows, 128, "full", 128), [d.name for d in docs], 32)
    stored = result["series"]["pi_finetuned/full@1L"]["1"]
    assert sorted(stored) == sorted(direct)
    for doc in direct:
        np.testing.assert_allclose(stored[doc], direct[doc], atol=2e-5)


def test_rerun_reuses_runs_and_cached_scores(smoke, monkeypatch):
    workdir, _, first = smoke

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run or a cached score was computed again")

    monkeypatch.setattr("longctx_jax.train.runs.finetune", refuse)  # finished runs are reused
    monkeypatch.setattr(finetune_claims, "EvalModel", refuse)  # scores come from the cache
    again = finetune_claims.run_claim(_config(workdir), FinetunedRuns(CONFIGS), name="smollm2_finetune",
                                      size="smoke", spec="repro_smollm2:smoke")
    assert again["series"] == first["series"] and again["claims"] == first["claims"]
    scores = sorted(os.listdir(os.path.join(workdir, "scores")))
    assert len(scores) == 2 + 4  # one untrained control per run, one per fine-tune and seed


def test_a_finished_run_of_another_config_is_refused(smoke):
    workdir, _, _ = smoke
    config = _config(workdir)
    config.overrides.optim = {"learning_rate": 0.5}
    with pytest.raises(ValueError, match="another config.*learning_rate"):
        finetune_claims.run_claim(config, FinetunedRuns(CONFIGS), name="smollm2_finetune", size="smoke",
                                  spec="repro_smollm2:smoke")


@pytest.mark.parametrize("change, match", [
    (lambda c: setattr(c, "run_overrides", {"nope": {}}), "run_overrides names runs"),
    (lambda c: setattr(c, "seeds", (0, 0)), "distinct"),
    (lambda c: setattr(c.eval, "multiples", (1, 0)), "positive ints"),
    (lambda c: setattr(c, "run_overrides", {"yarn": {"train": {"steps": 5}}}), "same budget"),
    (lambda c: setattr(c, "run_overrides", {"yarn": {"data": {"seq_len": 128}}}), "differ only"),
    (lambda c: setattr(c, "run_overrides", {"yarn": {"position": {"rope_scaling": {
        "rope_type": "dynamic", "factor": 2.0}}}}), "depends on the sequence length"),
    (lambda c: setattr(c.eval, "val_fraction", 0.2), "holds out"),
    (lambda c: setattr(c, "overrides", {"data": {"seq_lenn": 64}}), "unknown config field"),
])
def test_bad_configs_are_refused_before_training(tmp_path, change, match):
    config = _config(tmp_path)
    change(config)
    runs = _CountingRuns()
    with pytest.raises(ValueError, match=match):
        finetune_claims.run_claim(config, runs, name="smollm2_finetune", size="smoke",
                                  spec="repro_smollm2:smoke")
    assert runs.trained == []


def test_a_rule_on_a_series_the_driver_does_not_score_is_refused(tmp_path):
    config = _config(tmp_path)
    bad = copy.deepcopy([dict(c) for c in config.claims])
    bad[0]["rules"] = [{**dict(bad[0]["rules"][0]), "method": "yarn_finetuned/chunked@2L"}]
    config.claims = tuple(bad)
    with pytest.raises(ValueError, match="protocol 'full'"):
        finetune_claims.run_claim(config, _CountingRuns(), name="smollm2_finetune", size="smoke",
                                  spec="repro_smollm2:smoke")


def test_run_driver_reads_the_sized_config(tmp_path, monkeypatch):
    seen = {}

    def fake(config, runs, *, name, size, spec):
        seen.update(workdir=config.workdir, name=name, size=size, spec=spec,
                    steps=config.overrides.train.steps)
        return {}

    monkeypatch.setattr(finetune_claims, "run_claim", fake)
    finetune_claims.run_driver("smollm2_progressive", "smoke", FinetunedRuns(CONFIGS), config_dir=CONFIGS)
    assert seen == {"workdir": "runs/repro_smollm2/smoke", "name": "smollm2_progressive", "size": "smoke",
                    "spec": "repro_smollm2_progressive:smoke", "steps": 6}


def test_config_spec_and_sizes():
    assert finetune_claims.config_spec("smollm2_finetune") == "repro_smollm2:cpu"
    assert finetune_claims.config_spec("smollm2_finetune", "gpu") == "repro_smollm2:gpu"
    with pytest.raises(ValueError, match="unknown size"):
        finetune_claims.config_spec("smollm2_finetune", "huge")
    with pytest.raises(ValueError, match="unknown fine-tuning claim"):
        finetune_claims.config_spec("alibi")
    for variant in ("cpu", "gpu"):  # the real presets resolve to valid fine-tuning configs
        config = config_cli.load_config(os.path.join(CONFIGS, f"repro_smollm2.py:{variant}"))
        runs = finetune_claims._run_configs(config, FinetunedRuns(CONFIGS))
        pi, yarn = runs["pi"][0], runs["yarn"][0]
        assert pi.position.rope_scaling["rope_type"] == "linear"
        assert yarn.position.rope_scaling["rope_type"] == "yarn"
        a, b = json.loads(pi.to_json_best_effort()), json.loads(yarn.to_json_best_effort())
        assert {k for k in a if a[k] != b[k]} == {"position", "workdir"}  # they differ only in the scaling
        assert pi.data.val_fraction == config.eval.val_fraction


def test_the_docs_section_renders_the_result(smoke):
    from longctx_jax.eval import repro_report

    _, _, result = smoke
    text = repro_report.claim_section(result, [dict(c) for c in _config("unused").claims], "cmd")
    assert "Untrained controls" in text and "`pi_no_finetune/full@2L`" in text
    assert result["eval"]["document_names"][0] in text and "cores" in text
    for claim in result["claims"]:
        assert f"**{claim['verdict']}**" in text


def test_progressive_stages_chain_and_share_the_budget(tmp_path):
    config = config_cli.load_config(os.path.join(CONFIGS, "repro_smollm2_progressive.py:smoke"))
    config.workdir = str(tmp_path)
    runs = _CountingRuns()
    result = finetune_claims.run_claim(config, runs, name="smollm2_progressive", size="smoke",
                                       spec="repro_smollm2_progressive:smoke")
    # the stage-1 run trains before the stage it feeds, per seed, and is not scored itself
    names = [os.path.basename(os.path.dirname(p)) for p in runs.trained]
    assert names == ["yarn", "yarn_stage1", "yarn_progressive"] * 2
    assert sorted({k.split("/")[0] for k in result["series"]}) == [
        "yarn_finetuned", "yarn_no_finetune", "yarn_progressive_finetuned", "yarn_progressive_no_finetune"]
    stage2 = FinetunedRuns(CONFIGS).config("finetune_smollm2:tiny", 0, {}, str(tmp_path / "x"))
    with open(tmp_path / "yarn_progressive" / "seed0" / "config.json") as f:
        stored = json.load(f)
    assert stored["train"]["init_from"] == str(tmp_path / "yarn_stage1" / "seed0")
    assert stored["train"]["steps"] == 3 and stage2.train.steps != 3
    with open(tmp_path / "yarn_stage1" / "seed0" / "config.json") as f:
        assert json.load(f)["position"]["rope_scaling"] == {"rope_type": "yarn", "factor": 1.5}
    claims.check_consistent(result)
    assert result["claims"][0]["comparisons"][0]["rule"]["expect"] == "not_higher"


@pytest.mark.parametrize("change, match", [
    (lambda c: setattr(c, "stages", {"yarn_progressive": "nope"}), "both must be distinct runs"),
    (lambda c: setattr(c, "stages", {"yarn_progressive": "yarn_stage1", "yarn_stage1": "yarn_progressive"}),
     "cycle"),
    (lambda c: c.run_overrides.yarn_progressive.train.update({"steps": 4}), "same budget"),
    (lambda c: c.run_overrides.yarn_stage1.train.update({"steps": 2}), "warmup"),
])
def test_bad_stages_are_refused_before_training(tmp_path, change, match):
    config = config_cli.load_config(os.path.join(CONFIGS, "repro_smollm2_progressive.py:smoke"))
    config.workdir = str(tmp_path)
    change(config)
    runs = _CountingRuns()
    with pytest.raises(ValueError, match=match):
        finetune_claims.run_claim(config, runs, name="smollm2_progressive", size="smoke",
                                  spec="repro_smollm2_progressive:smoke")
    assert runs.trained == []


@pytest.fixture
def scoring_calls(monkeypatch) -> list:
    """score_model's EvalModel replaced by one that scores NLL 1 and counts its calls (returned)."""
    calls = []

    class _Model:
        def __init__(self, module):
            pass

        def token_nll(self, tokens, targets):
            calls.append(1)
            return np.ones(tokens.shape, np.float32)

    monkeypatch.setattr(finetune_claims, "EvalModel", _Model)
    return calls


def test_a_model_scored_under_another_name_is_read_from_the_cache(tmp_path, scoring_calls):
    windows = np.arange(2 * 9, dtype=np.int32).reshape(2, 9) % 7
    calls = scoring_calls
    args = (None, "key", windows, ["a", "b"], [1, 2], 4, 2)
    first = finetune_claims.score_model(*args, str(tmp_path / "yarn_no_finetune-abc.json"))
    n = len(calls)
    again = finetune_claims.score_model(*args, str(tmp_path / "yarn_progressive_no_finetune-abc.json"))
    assert again == first and len(calls) == n  # same model and inputs: read, not scored
    other = finetune_claims.score_model(None, "other", *args[2:], str(tmp_path / "x-abc.json"))
    assert len(calls) > n and other == first  # another model key: scored afresh


def test_a_model_under_another_attention_config_is_scored_afresh(tmp_path, scoring_calls):
    windows = np.arange(2 * 9, dtype=np.int32).reshape(2, 9) % 7
    calls = scoring_calls

    class _Module:
        def __init__(self, **changes):
            self.cfg = ModelConfig(vocab_size=7, d_model=8, num_layers=1, num_heads=2, num_kv_heads=1,
                                   mlp_dim=16).replace(**changes)

    args = ("key", windows, ["a", "b"], [1, 2], 4, 2, str(tmp_path / "run-abc.json"))
    finetune_claims.score_model(_Module(), *args)
    finetune_claims.score_model(_Module(), *args)
    assert len(calls) == 2  # same weights key and config: the second call reads the cache
    finetune_claims.score_model(_Module(attention_impl="blockwise"), *args)
    assert len(calls) == 4  # same weights key, another attention implementation: scored afresh
    finetune_claims.score_model(_Module(window=4), *args)  # a sliding window
    assert len(calls) == 6
    with open(tmp_path / "run-abc.json", encoding="utf-8") as f:
        assert json.load(f)["inputs"]["model_config"]["window"] == 4
