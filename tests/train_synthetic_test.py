"""Synthetic-task training: the passkey experiment end to end at toy size, refused configs."""

import pytest

from configs import repro_landmark, repro_memory_tokens
from longctx_jax.train.synthetic import passkey_retrieval, passkey_setup


def _toy(config):
    config.steps, config.log_every, config.eval_examples, config.batch_size = 3, 1, 4, 2
    config.optim.warmup_steps = 1
    return config


@pytest.mark.slow
@pytest.mark.parametrize("module, variants", [
    (repro_landmark, {"grouped_softmax", "top2_retrieval"}),
    (repro_memory_tokens, {"memory", "reset_memory"}),
])
def test_passkey_retrieval_runs_and_reports_every_variant_and_length(module, variants):
    config = _toy(module.get_config("small"))
    out = passkey_retrieval(config)
    assert set(out["exact_match"]) == variants
    lengths = {str(n) for n in (config.train_length, *config.eval_lengths)}
    for accuracy in out["exact_match"].values():
        assert set(accuracy) == lengths and all(0.0 <= a <= 1.0 for a in accuracy.values())
    assert out["steps"] == 3 and out["final_train_loss"] > 0


def test_unknown_method_is_refused():
    config = repro_landmark.get_config("small")
    config.method = "rmt"
    with pytest.raises(ValueError, match="unknown config.method 'rmt'"):
        passkey_setup(config)
