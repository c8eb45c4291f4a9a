"""PretrainedTokenizer implements the one tokenizer protocol (`longctx_jax.data.Tokenizer`)."""

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from longctx_jax.data import ByteTokenizer, Tokenizer
from longctx_jax.eval.passkey import passkey_example
from longctx_jax.models.tokenizer import PretrainedTokenizer

VOCAB = {"[UNK]": 0, "hello": 1, "world": 2, "</s>": 3}


def _word_level() -> HFTokenizer:
    tok = HFTokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


@pytest.mark.parametrize("eos_id, pad_id, want_pad", [(None, None, 0), (3, None, 3), (3, 2, 2)])
def test_pretrained_tokenizer_is_a_tokenizer_with_an_int_pad_id(eos_id, pad_id, want_pad):
    tok = PretrainedTokenizer(_word_level(), vocab_size=8, bos_id=None, eos_id=eos_id, pad_id=pad_id)
    assert isinstance(tok, Tokenizer)
    assert tok.pad_id == want_pad and isinstance(tok.pad_id, int)
    assert tok.encode("hello world") == [1, 2] and tok.decode([1, 2]) == "hello world"
    assert tok.token_bytes.shape == (8,)


def test_evaluators_take_any_protocol_tokenizer():
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    example = passkey_example(tok, 1000, 0.5, np.random.default_rng(0))
    assert 0 < example.answer_start < len(example.tokens) <= 1001
    assert tok.decode(example.tokens[example.answer_start :]) == " " + example.answer
