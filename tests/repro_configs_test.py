"""Every configs/repro_*.py variant loads, validates and documents its launch; the claims and protocols."""

import glob
import importlib
import os

import numpy as np
import pytest

from longctx_jax.data import ByteTokenizer
from longctx_jax.eval import claims, reproduction
from longctx_jax.eval.scoring import EvalModel
from longctx_jax.eval.verdicts import VERDICTS, check_claim, parse_series
from longctx_jax.models.config import ModelConfig
from longctx_jax.train.curriculum import curriculum_stages
from longctx_jax.train.runs import VOCAB, TrainedRuns, with_seed
from longctx_jax.train.trainer import decoder_from_config
from tests.train_trainer_test import small_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "repro_*.py")))
# The decoder reproductions of longctx_jax/eval/claims.py (others, e.g. repro_landmark,
# have their own drivers and config layouts).
DECODER_REPROS = ("repro_alibi", "repro_pi", "repro_yarn", "repro_streaming", "repro_sliding_window",
                  "repro_progressive")
CASES = [(m, v + size) for m in DECODER_REPROS for v in importlib.import_module(f"configs.{m}").VARIANTS
         for size in ("", ":smoke")]


def test_there_are_repro_configs():
    assert set(DECODER_REPROS) <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_every_repro_config_loads_and_documents_its_launch(module):
    mod = importlib.import_module(f"configs.{module}")
    config = mod.get_config()
    assert config.get("model") or config.get("runs")  # a model it trains, or the runs it fine-tunes
    assert "python -m experiments." in mod.__doc__ and f"configs/{module}.py" in mod.__doc__


@pytest.mark.parametrize("module, variant", CASES)
def test_config_validates(module, variant):
    mod = importlib.import_module(f"configs.{module}")
    from configs.repro_alibi import TOKENS_PER_STEP, TRAIN_LEN

    config = mod.get_config(variant)
    model = dict(config.model)
    model["vocab_size"] = ByteTokenizer().vocab_size
    cfg = ModelConfig.from_config(model)
    # equal tokens per step within a size
    assert config.data.seq_len * config.data.batch_size == TOKENS_PER_STEP[config.size]
    if config.size == "claim":  # the size: YaRN's ramp is not degenerate
        assert cfg.head_dim >= 64 and cfg.num_layers >= 3 and len(config.seeds) >= 3
        assert config.eval.num_windows * 8 * TRAIN_LEN["claim"] >= 65536
    for claim in config.claims:
        check_claim(claim)
    assert config.optim.warmup_steps < config.train.steps
    if config.train.curriculum:
        curriculum_stages(config.train.curriculum, config.data.seq_len * config.data.batch_size)
    if config.train.init_from:
        assert config.train.init_from.startswith("runs/repro")
        assert config.train.init_from != config.workdir
    if cfg.rope_scaling is not None:
        assert config.data.seq_len == TRAIN_LEN[config.size] * cfg.rope_scaling_dict["factor"]
    assert "python -m experiments." in mod.__doc__ and f"configs/{module}.py" in mod.__doc__


def test_unknown_variant_is_rejected():
    mod = importlib.import_module("configs.repro_alibi")
    with pytest.raises(ValueError, match="unknown variant"):
        mod.get_config("t5")


@pytest.mark.slow
def test_streaming_evaluator_without_eviction_matches_single_forward():
    model = decoder_from_config(small_config(), VOCAB)
    docs = np.random.default_rng(0).integers(0, 256, (2, 33)).astype(np.int32)
    dense = reproduction.ppl_vs_length(model, docs, [32])["32"]
    stream = reproduction.stream_ppl(model, docs, cache_size=40, sinks=4)  # 32 tokens: nothing evicted
    np.testing.assert_allclose(stream["ppl"], dense, rtol=1e-4)
    assert len(stream["ppl_by_eighth"]) == 8


class _NoRuns:
    """A `claims.Runs` that resolves configs but fails if anything is trained or loaded."""

    def __init__(self):
        self.configs = TrainedRuns(os.path.join(REPO, "configs"))

    def config(self, spec, seed=None):
        return self.configs.config(spec, seed)

    def train(self, spec, seed=None):
        raise AssertionError(f"trained {spec} before the arguments were checked")

    def load(self, spec, seed=None, **changes):
        raise AssertionError(f"loaded {spec} before the arguments were checked")


class _RandomRuns(_NoRuns):
    """A `claims.Runs` whose runs are untrained decoders of their configs (the plumbing, not the claim)."""

    def train(self, spec, seed=None):
        return {"steps": 0, "final_val_bpb": 8.0}

    def load(self, spec, seed=None, **changes):
        config = self.config(spec, seed)
        for name, value in changes.items():
            (config.model.attention if name in ("window", "sinks") else config.model)[name] = value
        return decoder_from_config(config, VOCAB)


def test_claim_registry_is_explicit_and_checks_arguments_first():
    assert tuple(claims.CLAIMS) == ("alibi", "pi", "yarn", "streaming", "window", "progressive")
    with pytest.raises(ValueError, match="unknown claim 'alibbi'"):
        claims.run_claim("alibbi", _NoRuns())
    with pytest.raises(ValueError, match="unknown size 'big'"):
        claims.run_claim("pi", _NoRuns(), size="big")


@pytest.mark.parametrize("name", list(claims.CLAIMS))
def test_every_rule_compares_series_its_driver_scores(name):
    driver = claims.CLAIMS[name]
    config = TrainedRuns(os.path.join(REPO, "configs")).config(driver.config)
    assert config.claims
    for claim in config.claims:
        for rule in check_claim(claim)["rules"]:
            for key in (rule["method"], rule["control"]):
                run, protocol, _ = parse_series(key)
                assert run in driver.models and (protocol == "stream") == (driver.protocol == "stream")


def test_trained_runs_resolve_config_specs():
    runs = TrainedRuns(os.path.join(REPO, "configs"))
    assert runs.config("repro_alibi:nope").model.position == "none"
    assert runs.config("repro_pi:pi").data.seq_len == 4 * runs.config(claims.BASE).data.seq_len
    assert runs.config("repro_pi:pi:smoke").data.seq_len == 4 * 64
    seeded = runs.config("repro_pi:pi", seed=2)
    assert seeded.seed == 2 and seeded.workdir == "runs/repro/pi/seed2"
    assert seeded.train.init_from == "runs/repro/rope/seed2"
    stage2 = runs.config("repro_progressive:stage2:smoke", 1)
    assert stage2.train.init_from == "runs/repro_smoke/progressive1/seed1"
    with pytest.raises(ValueError, match="no config file"):
        runs.config("repro_alibbi:rope")
    with pytest.raises(ValueError, match="unknown variant 'rope:big'"):
        runs.config("repro_alibi:rope:big")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        with_seed(runs.config(claims.BASE), -1)
    with pytest.raises(ValueError, match="steps_scale must be positive"):
        TrainedRuns(steps_scale=0.0)


def test_chunked_protocol_scores_each_chunk_on_its_own():
    model = EvalModel(decoder_from_config(small_config(), VOCAB))
    windows = np.random.default_rng(0).integers(0, 256, (3, 65)).astype(np.int32)
    chunked = reproduction.target_nll(model, windows, 64, "chunked", 16, batch=2)
    for c in range(4):
        part = windows[:, 16 * c : 16 * c + 17]
        reference = model.token_nll(part[:, :-1], part[:, 1:])
        np.testing.assert_allclose(chunked[:, 16 * c : 16 * (c + 1)], reference, atol=1e-5)
    full = reproduction.target_nll(model, windows, 64, "full", 16)
    np.testing.assert_allclose(full[:, :16], chunked[:, :16], atol=1e-5)  # the first chunk is the same
    blocks = reproduction.block_series(full, ["d0", "d1", "d0"], 16)
    assert list(blocks) == ["d0", "d1"] and len(blocks["d0"]) == 8
    np.testing.assert_allclose(blocks["d1"], full[1].reshape(4, 16).mean(axis=1), atol=1e-6)
    with pytest.raises(ValueError, match="not a multiple"):
        reproduction.target_nll(model, windows, 60, "chunked", 16)


def test_eval_windows_are_disjoint_slices_of_held_out_documents():
    windows, docs = reproduction.eval_windows(40, 2049)
    assert windows.shape == (40, 2049) and len(set(docs)) < 40  # some documents give two windows
    assert len({w.tobytes() for w in windows}) == 40
    with pytest.raises(ValueError, match="windows of"):
        reproduction.eval_windows(10_000, 2049)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pi", "alibi", "streaming"])
def test_a_driver_runs_end_to_end_on_untrained_models(name):
    result = claims.run_claim(name, _RandomRuns(), size="smoke")
    assert result["seeds"] == [0] and result["claims"]
    assert all(c["verdict"] in VERDICTS for c in result["claims"])
    claims.check_consistent(result)
    first = result["claims"][0]["comparisons"][0]
    first["verdict"] = next(v for v in VERDICTS if v != first["verdict"])
    with pytest.raises(ValueError, match="stored"):
        claims.check_consistent(result)
