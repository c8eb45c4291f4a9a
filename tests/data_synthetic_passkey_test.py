"""The synthetic passkey task: layout, answer mask, exact match, refused arguments."""

import numpy as np
import pytest

from longctx_jax.data.synthetic_passkey import FIRST_KEY, KEY_MARK, QUERY_MARK, exact_match, passkey_batch


def test_layout_and_mask():
    batch = passkey_batch(np.random.default_rng(0), 6, 20, num_keys=5, vocab_size=30, key_span=4, key_len=2)
    for key in ("inputs", "targets", "positions", "segment_ids", "loss_mask"):
        assert batch[key].shape == (6, 20), key
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    for row_in, row_tgt, mask in zip(batch["inputs"], batch["targets"], batch["loss_mask"], strict=True):
        mark = int(np.flatnonzero(row_in == KEY_MARK)[0])
        assert mark < 4
        key = row_in[mark + 1 : mark + 3]
        assert np.all((key >= FIRST_KEY) & (key < FIRST_KEY + 5))
        assert row_in[-2] == QUERY_MARK and row_in[-1] == key[0]
        np.testing.assert_array_equal(row_tgt[-2:], key)
        np.testing.assert_array_equal(mask, [0.0] * 18 + [1.0, 1.0])
    assert batch["inputs"].max() < 30 and batch["targets"].max() < 30


def test_exact_match_counts_whole_answers():
    batch = passkey_batch(np.random.default_rng(1), 4, 12, num_keys=3, vocab_size=16, key_span=3, key_len=2)
    logits = np.zeros((4, 12, 16), np.float32)
    np.put_along_axis(logits, batch["targets"][..., None], 1.0, axis=-1)  # every prediction right
    assert exact_match(logits, batch) == 1.0
    logits[0, -1] = 0.0
    logits[0, -1, (batch["targets"][0, -1] + 1) % 16] = 1.0  # one answer token of row 0 wrong
    assert exact_match(logits, batch) == 0.75


@pytest.mark.parametrize("kwargs, match", [
    ({"num_keys": 20, "vocab_size": 16, "key_span": 2}, "leaves no filler"),
    ({"num_keys": 4, "vocab_size": 16, "key_span": 12}, "does not leave room"),
    ({"num_keys": 0, "vocab_size": 16, "key_span": 2}, "must be positive"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        passkey_batch(np.random.default_rng(0), 2, 12, **kwargs)
