"""The passkey reproductions: per-example series, verdicts by the shared rules, reuse of runs."""

import copy
import json
import os

import numpy as np
import pytest

from longctx_jax.eval import claims, passkey_claims
from longctx_jax.eval.verdicts import VERDICTS
from longctx_jax.train.runs import PasskeyRuns

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


class _FakeRuns:
    """Real configs, made-up results: each variant retrieves with its own probability per length."""

    def __init__(self, accuracy):
        self.accuracy = accuracy  # {variant: {multiple of L: probability of a hit}}
        self.real = PasskeyRuns(CONFIGS, root="unused")
        self.trained = []

    def config(self, spec, seed):
        return self.real.config(spec, seed)

    def train(self, spec, seed):
        self.trained.append((spec, seed))
        config = self.config(spec, seed)
        rng = np.random.default_rng([seed, len(spec)])
        train_len = int(config.train_length)
        hits = {}
        for variant, by_k in self.accuracy.items():
            hits[variant] = {str(k * train_len): [int(x) for x in rng.random(config.eval_examples) < p]
                             for k, p in by_k.items()}
        return {"method": config.method, "steps": config.steps, "final_train_loss": 0.1, "train_seconds": 1.0,
                "hits": hits, "config": json.loads(config.to_json())}


def _landmark_runs(landmark_p, control_p):
    p = {k: landmark_p for k in (1, 2, 4)}
    return _FakeRuns({"grouped_softmax": p, "top4_retrieval": p, "top2_retrieval": p,
                      "causal_softmax": {k: control_p for k in (1, 2, 4)}})


@pytest.mark.parametrize("size", ["claim", "smoke"])
def test_landmark_verdicts_follow_the_per_example_errors(size):
    better = passkey_claims.run_claim("landmark", _landmark_runs(0.95, 0.3), size=size)
    assert better["protocol"] == "passkey" and better["seeds"] == [0, 1, 2]
    assert [c["verdict"] for c in better["claims"]] == ["yes", "yes"]
    worse = passkey_claims.run_claim("landmark", _landmark_runs(0.3, 0.95), size=size)
    assert [c["verdict"] for c in worse["claims"]] == ["no", "no"]
    same = passkey_claims.run_claim("landmark", _landmark_runs(0.6, 0.6), size=size)
    assert all(c["verdict"] in VERDICTS for c in same["claims"])
    # every run trained once per seed, the landmark model's two evaluations sharing one run
    assert len(better["runs"]) == 2 and all(len(v) == 3 for v in better["runs"].values())


def test_passkey_series_are_per_example_errors_and_survive_the_consistency_check():
    runs = _FakeRuns({"memory": {1: 1.0, 2: 0.7, 4: 0.4}, "reset_memory": {1: 0.06, 2: 0.06, 4: 0.06}})
    result = passkey_claims.run_claim("memory_tokens", runs)
    examples = runs.config("repro_memory_tokens:full", 0).eval_examples
    key = "memory/passkey@1L"
    assert set(result["series"]) >= {key, "memory/passkey@2L", "reset_memory/passkey@4L"}
    assert result["series"][key]["0"] == {"examples": [0.0] * examples}  # every example retrieved
    assert passkey_claims.accuracy(result["summaries"][key]) == (1.0, 1.0, 1.0)
    assert result["claims"][0]["verdict"] == "yes"
    claims.check_consistent(result)
    tampered = copy.deepcopy(result)
    tampered["series"]["memory/passkey@4L"]["1"]["examples"] = [1.0] * examples  # seed 1 never retrieves
    with pytest.raises(ValueError, match="stored verdict"):
        claims.check_consistent(tampered)


def test_bad_names_and_missing_hits_are_refused_before_work():
    with pytest.raises(ValueError, match="unknown passkey claim 'landmarks'"):
        passkey_claims.run_claim("landmarks", _landmark_runs(1, 1))
    with pytest.raises(ValueError, match="unknown size 'big'"):
        passkey_claims.run_claim("landmark", _landmark_runs(1, 1), size="big")
    no_topk = _FakeRuns({"grouped_softmax": {1: 1, 2: 1, 4: 1}, "causal_softmax": {1: 1, 2: 1, 4: 1}})
    with pytest.raises(ValueError, match="no hits for variant 'top4_retrieval'"):
        passkey_claims.run_claim("landmark", no_topk)


def test_passkey_runs_reuse_only_a_run_with_the_same_config(tmp_path):
    runs = PasskeyRuns(CONFIGS, root=str(tmp_path))
    config = runs.config("repro_landmark:full:no_landmark", 2)
    assert config.workdir == os.path.join(str(tmp_path), "landmark", "full_no_landmark", "seed2")
    assert config.seed == 2 and config.method == "no_landmark"
    stored = json.loads(config.to_json())
    for field in ("claims", "seeds"):  # what the claim reads is not part of the run
        del stored[field]
    os.makedirs(config.workdir)
    path = os.path.join(config.workdir, "results.json")
    with open(path, "w") as f:
        json.dump({"hits": {}, "config": stored}, f)
    assert runs.train("repro_landmark:full:no_landmark", 2)["config"] == stored
    stored["steps"] = 10
    with open(path, "w") as f:
        json.dump({"hits": {}, "config": stored}, f)
    with pytest.raises(ValueError, match="steps: stored 10, asked 3000"):
        runs.train("repro_landmark:full:no_landmark", 2)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        runs.config("repro_landmark:full", -1)


def test_the_committed_gpu_runs_match_the_configs():
    """docs/results/repro/{landmark,memory_tokens}.json were judged on runs of the configs as they are."""
    from longctx_jax.bench import published

    for name in passkey_claims.DRIVERS:
        result = published.repro_result(name)
        if result is None:
            continue
        assert result["config"] == passkey_claims.config_spec(name)
        assert result["seeds"] == list(runs_seeds := PasskeyRuns(CONFIGS).config(result["config"], 0).seeds)
        assert all(set(by_seed) == {str(s) for s in runs_seeds} for by_seed in result["runs"].values())


class _ToyRuns(PasskeyRuns):
    def config(self, spec, seed):
        config = super().config(spec, seed)
        config.steps, config.log_every, config.eval_examples, config.batch_size = 3, 1, 4, 2
        config.optim.warmup_steps = 1
        return config


def test_passkey_runs_train_once_then_reuse(tmp_path):
    runs = _ToyRuns(CONFIGS, root=str(tmp_path))
    first = runs.train("repro_memory_tokens:small", 0)
    path = tmp_path / "memory_tokens" / "small" / "seed0" / "results.json"
    assert json.loads(path.read_text())["hits"] == first["hits"]
    assert "claims" not in first["config"] and first["config"]["seed"] == 0
    mtime = path.stat().st_mtime_ns
    assert runs.train("repro_memory_tokens:small", 0) == json.loads(path.read_text())
    assert path.stat().st_mtime_ns == mtime  # reused, not retrained
