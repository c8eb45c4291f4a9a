"""Every configs/repro_*.py variant loads, validates and documents its launch; the claims and protocols."""

import glob
import importlib
import os

import numpy as np
import pytest

from longctx_jax.data import ByteTokenizer
from longctx_jax.eval import claims, reproduction
from longctx_jax.models.config import ModelConfig
from longctx_jax.train.curriculum import curriculum_stages
from longctx_jax.train.runs import VOCAB, TrainedRuns
from longctx_jax.train.trainer import decoder_from_config
from tests.train_trainer_test import small_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "repro_*.py")))
# The decoder reproductions of longctx_jax/eval/claims.py (others, e.g. repro_landmark,
# have their own drivers and config layouts).
DECODER_REPROS = ("repro_alibi", "repro_pi", "repro_yarn", "repro_streaming", "repro_sliding_window",
                  "repro_progressive")
CASES = [(m, v) for m in DECODER_REPROS for v in importlib.import_module(f"configs.{m}").VARIANTS]


def test_there_are_repro_configs():
    assert set(DECODER_REPROS) <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_every_repro_config_loads_and_documents_its_launch(module):
    mod = importlib.import_module(f"configs.{module}")
    assert mod.get_config().model
    assert "python -m experiments." in mod.__doc__ and f"configs/{module}.py" in mod.__doc__


@pytest.mark.parametrize("module, variant", CASES)
def test_config_validates(module, variant):
    mod = importlib.import_module(f"configs.{module}")
    config = mod.get_config(variant)
    model = dict(config.model)
    model["vocab_size"] = ByteTokenizer().vocab_size
    cfg = ModelConfig.from_config(model)
    assert config.data.seq_len * config.data.batch_size == 64 * 32  # equal tokens per step everywhere
    assert config.optim.warmup_steps < config.train.steps
    if config.train.curriculum:
        curriculum_stages(config.train.curriculum, config.data.seq_len * config.data.batch_size)
    if config.train.init_from:
        assert config.train.init_from.startswith("runs/repro/")
        assert config.train.init_from != config.workdir
    if cfg.rope_scaling is not None:
        assert config.data.seq_len == 64 * cfg.rope_scaling_dict["factor"]
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

    def config(self, spec):
        return self.configs.config(spec)

    def train(self, spec):
        raise AssertionError(f"trained {spec} before the arguments were checked")

    def load(self, spec, **changes):
        raise AssertionError(f"loaded {spec} before the arguments were checked")


def test_claim_registry_is_explicit_and_checks_arguments_first():
    assert tuple(claims.CLAIMS) == ("alibi", "pi", "yarn", "streaming", "window", "progressive")
    with pytest.raises(ValueError, match="unknown claim 'alibbi'"):
        claims.run_claim("alibbi", _NoRuns())
    with pytest.raises(ValueError, match="alibi claim only"):
        claims.run_claim("pi", _NoRuns(), variants=["rope"])
    with pytest.raises(ValueError, match="must include 'alibi' and 'rope'"):
        claims.run_claim("alibi", _NoRuns(), variants=["rope", "t5"])


def test_trained_runs_resolve_config_specs():
    runs = TrainedRuns(os.path.join(REPO, "configs"))
    assert runs.config("repro_alibi:nope").model.position == "none"
    assert runs.config("repro_pi:pi").data.seq_len == 4 * runs.config(claims.BASE).data.seq_len
    with pytest.raises(ValueError, match="no config file"):
        runs.config("repro_alibbi:rope")
    with pytest.raises(ValueError, match="steps_scale must be positive"):
        TrainedRuns(steps_scale=0.0)
