"""Scoring: teacher-forced answer match equals an explicit greedy loop; NLL against log_softmax."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.eval.scoring import EvalModel, answers_match, bucket_length
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder

VOCAB = 48


REF_LENGTH = 32


def tiny_decoder(seed: int = 0) -> Decoder:
    cfg = ModelConfig(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                      init_std=0.5)
    return Decoder(cfg, rngs=nnx.Rngs(seed))


@nnx.jit
def _reference_logits(model, tokens_BT):
    return model(tokens_BT, jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape))


def greedy_loop(model, prompt: np.ndarray, steps: int) -> list[int]:
    """Reference: re-run the sequence (zero-padded to REF_LENGTH) each step, append the argmax."""
    seq = list(int(t) for t in prompt)
    for _ in range(steps):
        tokens = np.zeros((1, REF_LENGTH), np.int32)
        tokens[0, : len(seq)] = seq
        logits = _reference_logits(model, jnp.asarray(tokens))
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt):]


@pytest.mark.parametrize("wrap", ["nnx", "callable"])
def test_teacher_forced_match_equals_greedy_loop(wrap):
    model = tiny_decoder()
    target = model if wrap == "nnx" else (lambda t, p: model(t, p))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, VOCAB, size=n) for n in (9, 14, 20)]
    steps = 4
    greedy = [greedy_loop(model, p, steps) for p in prompts]
    seqs, starts, expected = [], [], []
    for p, g in zip(prompts, greedy, strict=True):
        # the greedy answer itself, a copy wrong in the last token, and one wrong in the first
        wrong_last = g[:-1] + [(g[-1] + 1) % VOCAB]
        wrong_first = [(g[0] + 1) % VOCAB] + g[1:]
        for answer, ok in ((g, True), (wrong_last, False), (wrong_first, False)):
            seqs.append(np.concatenate([p, answer]))
            starts.append(len(p))
            expected.append(ok)
    # batch 4 pads the last of three batches with copies; batch 1 runs one example per forward
    got = answers_match(target, seqs, starts, length=REF_LENGTH, batch_size=4 if wrap == "nnx" else 1)
    np.testing.assert_array_equal(got, np.array(expected))


def test_random_answers_match_iff_equal_to_greedy():
    model = tiny_decoder(1)
    em = EvalModel(model)
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, VOCAB, size=12)
    greedy = greedy_loop(model, prompt, 2)
    answers = [greedy] + [list(rng.integers(0, VOCAB, size=2)) for _ in range(20)]
    seqs = [np.concatenate([prompt, a]) for a in answers]
    got = answers_match(em, seqs, [12] * len(answers), length=REF_LENGTH)
    np.testing.assert_array_equal(got, np.array([list(a) == greedy for a in answers]))


def test_token_nll_matches_log_softmax():
    model = tiny_decoder(2)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, VOCAB, size=(2, REF_LENGTH))
    targets = rng.integers(0, VOCAB, size=(2, REF_LENGTH))
    got = EvalModel(model).token_nll(tokens, targets)
    logp = jax.nn.log_softmax(_reference_logits(model, jnp.asarray(tokens, jnp.int32)), axis=-1)
    want = -np.take_along_axis(np.asarray(logp), targets[..., None], axis=-1)[..., 0]
    chex.assert_shape(got, (2, REF_LENGTH))
    chex.assert_trees_all_close(got, want, atol=1e-4, rtol=1e-4)


def test_bucket_length_and_errors():
    assert bucket_length(1) == 128 and bucket_length(128) == 128 and bucket_length(129) == 256
    with pytest.raises(ValueError, match="length"):
        bucket_length(0)
    with pytest.raises(ValueError, match="answer start"):
        answers_match(lambda t, p: jnp.zeros(t.shape + (4,)), [np.arange(4)], [0], length=8)


def test_int64_positions_beyond_int32_are_refused_not_wrapped():
    # jax.jit and jnp.asarray(..., int32) would wrap 2**31 to a negative position silently.
    em = EvalModel(tiny_decoder())
    tokens = np.zeros((1, 4), np.int32)
    with pytest.raises(ValueError, match="fit int32"):
        em.token_nll(tokens, tokens, np.array([[0, 1, 2, 2**31]], np.int64))
    assert np.isfinite(em.token_nll(tokens, tokens, np.array([[0, 1, 2, 3]], np.int64))).all()
