"""Multiple-choice tasks: harness-style scoring against hand computation, resume, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.data.tokenizers import ByteTokenizer
from longctx_jax.eval import choice
from longctx_jax.eval.results import ResultStore
from longctx_jax.eval.scoring import EvalModel
from longctx_jax.eval.suite import SuiteSpec
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder

TOK = ByteTokenizer()


def likes(letter: str):
    """A causal stand-in whose next-token log-probability is 3 nats higher for `letter`'s byte."""
    favoured = ord(letter)

    def logits(tokens_BT, positions_BT):
        del positions_BT
        out = jnp.zeros(tokens_BT.shape + (TOK.vocab_size,), jnp.float32)
        return out.at[..., favoured].set(3.0)

    return logits


RECORDS = [  # TFDS gives bytes for text features; the first record also exercises HellaSwag's cleaning
    {"context": b"A man [title] is cooking.", "endings": [b"zzz", b"aa", b"zz", b"b"], "label": 1},
    {"context": "The cat", "endings": ["xy", "aaaa", "q", "ab"], "label": 1},
    {"context": "Then", "endings": ["aaaaaa", "c", "a", "zzzzz"], "label": 0},
]


def test_scores_equal_the_hand_computation(tmp_path):
    # log p(favoured) = 3 - lse, log p(other) = -lse, lse = log(e^3 + V - 1). An ending " w" scores
    # -lse for the space plus per letter; argmax of the sum picks most 'a's with fewest other bytes.
    lse = np.log(np.exp(3.0) + TOK.vocab_size - 1)
    ll = choice.choice_loglikelihoods(likes("a"), [84, 104], [TOK.encode(" aa"), TOK.encode(" b")])
    np.testing.assert_allclose(ll, [-lse + 2 * (3 - lse), -2 * lse], rtol=1e-5)
    row = choice.choice_sweep(likes("a"), TOK, ResultStore(tmp_path / "r.json"), method="none",
                              task="hellaswag", num_examples=3, source=RECORDS, progress=False)
    # With lse ~ 5.63 every byte lowers the sum, so sums favour short endings and per-byte scores
    # favour endings dense in 'a' (3 - lse per 'a' byte, -lse for the others and the space):
    # example 1: " aa" (label 1) wins the sum (-10.9 vs " b" -11.3) and per byte -> hit, hit.
    # example 2: the sum picks " q" (-11.3; label 1 is " aaaa", -16.2) -> miss; per byte " aaaa" -> hit.
    # example 3: the sum picks " a" (-8.3; label 0 is " aaaaaa", -21.4) -> miss; per byte " aaaaaa" -> hit.
    assert row["acc"] == pytest.approx(1 / 3) and row["acc_norm"] == pytest.approx(1.0)
    assert row["acc_lo"] <= row["acc"] <= row["acc_hi"]
    context, endings, label, nbytes = choice.encode_example(TOK, choice.TASKS["hellaswag"], RECORDS[0])
    assert TOK.decode(context) == "A man. is cooking." and label == 1 and nbytes == [4, 3, 3, 2]


def test_decoder_loglikelihood_is_the_sum_of_its_token_nll():
    cfg = ModelConfig(vocab_size=TOK.vocab_size, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2,
                      mlp_dim=64)
    model = EvalModel(Decoder(cfg, rngs=nnx.Rngs(0)))
    context, endings = TOK.encode("Once upon"), [TOK.encode(" a time"), TOK.encode(" x")]
    got = choice.choice_loglikelihoods(model, context, endings)
    for ll, ending in zip(got, endings, strict=True):
        seq = np.asarray(context + ending, np.int32)[None]
        logp = jax.nn.log_softmax(model.logits(jnp.asarray(seq[:, :-1]), None), axis=-1)[0]
        want = sum(float(logp[t - 1, seq[0, t]]) for t in range(len(context), seq.shape[1]))
        np.testing.assert_allclose(ll, want, rtol=1e-5, atol=1e-5)


def test_a_stored_row_is_not_rerun(tmp_path):
    path = tmp_path / "r.json"
    kw = dict(method="none", task="hellaswag", num_examples=2, source=RECORDS, progress=False)
    assert choice.choice_sweep(likes("a"), TOK, ResultStore(path), **kw) is not None

    def never(tokens_BT, positions_BT):
        raise AssertionError("a stored row was recomputed")

    assert choice.choice_sweep(never, TOK, ResultStore(path), **kw) is None
    row = choice.choice_sweep(likes("b"), TOK, ResultStore(path), **{**kw, "num_examples": 3})
    assert row["num_examples"] == 3


def test_bad_input_is_refused_before_scoring(tmp_path):
    store = ResultStore(tmp_path / "r.json")
    with pytest.raises(ValueError, match="unknown multiple-choice task.*'hellaswog'.*hellaswag"):
        SuiteSpec.from_mapping({"choice_tasks": ("hellaswog",)})
    with pytest.raises(ValueError, match="fewer than num_examples=5"):
        choice.choice_sweep(likes("a"), TOK, store, method="none", task="hellaswag", num_examples=5,
                            source=RECORDS)
    with pytest.raises(ValueError, match="not prepared under data_dir"):
        choice.load_source("hellaswag", str(tmp_path / "no_data"))
    bad = [{**RECORDS[0], "label": 7}]
    with pytest.raises(ValueError, match="label 7"):
        choice.choice_sweep(likes("a"), TOK, store, method="none", task="hellaswag", num_examples=1,
                            source=bad)
