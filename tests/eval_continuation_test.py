"""One-prefill scoring: strict equals the full-forward teacher-forced match, greedy equals
`generate`, and the lenient scorer parses the first integer of the continuation."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.data.tokenizers import ByteTokenizer
from longctx_jax.eval.continuation import ContinuationScorer, first_integer, lenient_match
from longctx_jax.eval.passkey import passkey_example
from longctx_jax.eval.results import ResultStore
from longctx_jax.eval.retrieval import example_rng, retrieval_sweep
from longctx_jax.eval.scoring import EvalModel, answers_match
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.generate import Generator, generate

VOCAB = 48
CAPACITY = 32


def tiny_decoder(rope_scaling=None, seed: int = 0) -> Decoder:
    cfg = ModelConfig(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                      init_std=0.5, rope_scaling=rope_scaling)
    return Decoder(cfg, rngs=nnx.Rngs(seed))


@nnx.jit
def _forward(model, tokens_BT):
    return model(tokens_BT)


DYNAMIC = {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 16}


@pytest.mark.parametrize("rope_scaling", [None, DYNAMIC])
def test_single_prefill_strict_equals_full_forward_strict(rope_scaling):
    model = tiny_decoder(rope_scaling)
    scorer = ContinuationScorer(model)
    assert scorer.cached
    rng = np.random.default_rng(0)
    gen = Generator(model, cache_size=CAPACITY)
    cases, expected_any = [], []
    n = 12  # one prompt length and one answer length: each jitted function compiles once
    for _ in range(3):
        prompt = rng.integers(0, VOCAB, size=n)
        greedy = gen(prompt[None], 4)[0, n:]
        for answer in (greedy, np.r_[greedy[:-1], (greedy[-1] + 1) % VOCAB], rng.integers(0, VOCAB, size=4)):
            cases.append((prompt, np.asarray(answer, np.int32)))
    old = answers_match(model, [np.r_[p, a] for p, a in cases], [len(p) for p, _ in cases], length=CAPACITY)
    for (prompt, answer), want in zip(cases, old, strict=True):
        out = scorer.score(prompt, answer, new_tokens=6, capacity=CAPACITY)
        assert out.strict == bool(want)
        # per-token hits against an independent full-forward argmax
        seq = np.zeros((1, CAPACITY), np.int32)
        seq[0, : len(prompt) + len(answer) - 1] = np.r_[prompt, answer[:-1]]
        start = len(prompt) - 1
        ref = np.asarray(jnp.argmax(_forward(model, jnp.asarray(seq)), -1))[0, start : start + len(answer)]
        np.testing.assert_array_equal(out.answer_hits, ref == answer)
        expected_any.append(out.strict)
    assert any(expected_any) and not all(expected_any)  # both verdicts exercised


@pytest.mark.parametrize("wrap", ["decoder", "callable"])
def test_greedy_continuation_equals_generate(wrap):
    model = tiny_decoder()
    target = model if wrap == "decoder" else EvalModel(lambda t, p: model(t, p))
    scorer = ContinuationScorer(target)
    assert scorer.cached == (wrap == "decoder")
    if scorer.cached:  # the greedy steps read the weights as Generator's decode step does
        assert scorer.decode_layout == Generator(model, cache_size=CAPACITY).decode_layout
    prompt = np.random.default_rng(1).integers(0, VOCAB, size=11)
    want = generate(model, prompt, max_new_tokens=7, cache_size=CAPACITY)[11:]
    out = scorer.score(prompt, want[:3], new_tokens=7, capacity=CAPACITY)
    np.testing.assert_array_equal(out.generated, want)
    assert out.strict and out.answer_hits.all()


def test_score_refuses_bad_input():
    scorer = ContinuationScorer(tiny_decoder())
    with pytest.raises(ValueError, match="more than capacity 32"):
        scorer.score(np.zeros(30, np.int32), np.zeros(2, np.int32), new_tokens=4, capacity=CAPACITY)
    with pytest.raises(ValueError, match="new_tokens must be an integer >= 1, got 0"):
        scorer.score(np.zeros(3, np.int32), np.zeros(2, np.int32), new_tokens=0, capacity=CAPACITY)
    with pytest.raises(ValueError, match="non-empty"):
        scorer.score(np.zeros(0, np.int32), np.zeros(2, np.int32), new_tokens=1, capacity=CAPACITY)


@pytest.mark.parametrize("text, key, want", [
    (" 51234. Remember it.", "51234", True),
    ("\n\nThe pass key is 51234", "51234", True),
    (" 512345", "51234", False),       # a longer number is not the key
    (" 5123", "51234", False),         # a truncated key
    (" 77 and 51234", "51234", False),  # the first integer decides
    (" none", "51234", False),
])
def test_lenient_match_hand_cases(text, key, want):
    assert lenient_match(text, key) is want


def test_first_integer():
    assert first_integer("a12b34") == "12" and first_integer("none") is None


TOK = ByteTokenizer()


def test_strict_and_lenient_differ_where_the_key_comes_late(tmp_path):
    """A model that answers '\\n' then the key misses strictly (the first answer token is ' ')
    and hits leniently (the first integer of its continuation is the key)."""
    ex = passkey_example(TOK, 400, 0.5, example_rng(0, 400, 0.5, 0))
    reply = np.asarray(TOK.encode(f"\n{ex.answer}. Done"), np.int32)
    prompt_len = ex.answer_start

    def scripted(tokens_BT, positions_BT):
        # predicts reply[t - prompt_len + 1] at position t >= prompt_len - 1, else token 0
        t = jnp.arange(tokens_BT.shape[1]) - (prompt_len - 1)
        nxt = jnp.where((t >= 0) & (t < len(reply)), jnp.asarray(reply)[jnp.clip(t, 0, len(reply) - 1)], 0)
        return jnp.broadcast_to(jnp.eye(TOK.vocab_size)[nxt], tokens_BT.shape + (TOK.vocab_size,))

    def build(tokenizer, length, depth, rng, trial):
        return ex

    rec = retrieval_sweep(scripted, TOK, ResultStore(tmp_path / "r.json"), section="passkey", build=build,
                          method="m", lengths=[512], depths=[0.5], trials=2, progress=False)[0]
    assert rec["accuracy"] == 0.0 and rec["lenient_accuracy"] == 1.0
    assert rec["hits"] == 0 and rec["lenient_hits"] == 2 and rec["trials"] == 2
    assert [m["trial"] for m in rec["misses"]] == [0, 1]
    assert rec["misses"][0]["generated"].startswith(f"\n{ex.answer}") and not rec["misses"][0]["strict"]


@pytest.mark.slow  # loads SmolLM2-135M and runs ~10 prompts of 1K tokens
def test_real_model_single_prefill_matches_full_forward_and_ruler_fits():
    from longctx_jax.eval.retrieval import EXTRA_TOKENS
    from longctx_jax.eval.ruler import TASKS, ruler_example
    from longctx_jax.eval.scoring import bucket_length
    from longctx_jax.models.llama import load_gguf, smollm2_path

    model, tok = load_gguf(smollm2_path())
    n = 1024
    examples = [passkey_example(tok, n - EXTRA_TOKENS, d, example_rng(0, n, d, 0)) for d in (0.0, 1.0)]
    old = answers_match(model, [e.tokens for e in examples], [e.answer_start for e in examples],
                        length=bucket_length(n))
    scorer = ContinuationScorer(model)
    for e, want in zip(examples, old, strict=True):
        out = scorer.score(e.tokens[: e.answer_start], e.tokens[e.answer_start :], new_tokens=9, capacity=n)
        assert out.strict == bool(want)
    for task in TASKS:
        e = ruler_example(tok, task, 2048)
        assert len(e.prompt) + e.max_new_tokens <= 2048
        assert all(r in tok.decode(e.prompt) for r in e.references)
