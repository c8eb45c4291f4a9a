"""ByteTokenizer: round trips on real text, specials, the Tokenizer protocol."""

import json
import pathlib

import numpy as np
import pytest

from longctx_jax.data.tokenizers import ByteTokenizer, Tokenizer, encode_array

TEXTS = [
    "",
    "plain ascii\nwith a newline\tand tab",
    "Grüße aus Köln, naïve café — 东京 and Ελληνικά, emoji 🙂🚀, zero-width\u200bjoiner",
    pathlib.Path(json.__file__).read_text(encoding="utf-8"),
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    np.testing.assert_array_equal(encode_array(tok, text), np.array(ids, np.int32))
    assert encode_array(tok, text).dtype == np.int32


def test_non_ascii_uses_multibyte_ids():
    tok = ByteTokenizer()
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.encode("🙂") == [0xF0, 0x9F, 0x99, 0x82]


def test_specials_and_vocab():
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 259
    assert {tok.pad_id, tok.bos_id, tok.eos_id} == {256, 257, 258}
    ids = [tok.bos_id, *tok.encode("héllo"), tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "héllo"
    assert tok.decode(np.array(ids, np.int32)) == "héllo"


def test_token_bytes():
    tok = ByteTokenizer()
    assert tok.token_bytes.shape == (tok.vocab_size,)
    assert tok.token_bytes[:256].tolist() == [1] * 256
    assert tok.token_bytes[[tok.pad_id, tok.bos_id, tok.eos_id]].tolist() == [0, 0, 0]
    text = TEXTS[2]
    assert int(tok.token_bytes[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_decode_rejects_out_of_range():
    with pytest.raises(ValueError, match="259"):
        ByteTokenizer().decode([1, 259])
    with pytest.raises(ValueError, match="259"):
        ByteTokenizer().decode([-1])


def test_decode_invalid_utf8_is_replaced():
    assert ByteTokenizer().decode([0xC3]) == "\ufffd"
