"""Synthetic-task training: the passkey experiment end to end at toy size, refused configs."""

import pytest

from configs import repro_landmark, repro_memory_tokens
from longctx_jax.train.synthetic import passkey_retrieval, passkey_setup


def _toy(config):
    config.steps, config.log_every, config.eval_examples, config.batch_size = 3, 1, 4, 2
    config.optim.warmup_steps = 1
    return config


@pytest.mark.slow
@pytest.mark.parametrize("module, preset, variants", [
    (repro_landmark, "small", {"grouped_softmax", "top2_retrieval"}),
    (repro_landmark, "small:no_landmark", {"causal_softmax"}),
    (repro_memory_tokens, "small", {"memory", "reset_memory"}),
])
def test_passkey_retrieval_runs_and_reports_every_variant_and_length(module, preset, variants):
    config = _toy(module.get_config(preset))
    out = passkey_retrieval(config)
    assert set(out["exact_match"]) == variants
    lengths = {str(n) for n in (config.train_length, *config.eval_lengths)}
    for accuracy in out["exact_match"].values():
        assert set(accuracy) == lengths and all(0.0 <= a <= 1.0 for a in accuracy.values())
    assert out["steps"] == 3 and out["final_train_loss"] > 0
    for variant, by_length in out["hits"].items():  # per example, the accuracy's own counts
        assert set(by_length) == lengths
        for length, hits in by_length.items():
            assert len(hits) == config.eval_examples and set(hits) <= {0, 1}
            assert sum(hits) / len(hits) == out["exact_match"][variant][length]
    assert out["device"] and out["jax_version"]


def test_unknown_method_is_refused():
    config = repro_landmark.get_config("small")
    config.method = "rmt"
    with pytest.raises(ValueError, match="unknown config.method 'rmt'"):
        passkey_setup(config)


def test_landmark_control_is_the_same_task_without_landmarks():
    import numpy as np

    from longctx_jax.models.decoder import Decoder

    landmarked = repro_landmark.get_config("small")
    config = repro_landmark.get_config("small:no_landmark")
    assert config.method == "no_landmark" and config.workdir == landmarked.workdir + "_no_landmark"
    assert config.model.to_dict() == landmarked.model.to_dict() and config.steps == landmarked.steps
    model, batch, variants = passkey_setup(config)
    assert type(model) is Decoder and set(variants) == {"causal_softmax"}
    out = batch(np.random.default_rng(0), 4, config.train_length)
    assert out["inputs"].shape == (4, config.train_length)
    assert not (out["inputs"] == config.model.vocab_size - 1).any()  # the landmark id never appears
    with pytest.raises(ValueError, match="unknown preset 'small:landmarks'"):
        repro_landmark.get_config("small:landmarks")
