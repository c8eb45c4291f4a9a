"""The tokenizer protocol the evaluators rely on: `encode(text)` and `decode(ids)`.

Any object with those two methods works: `longctx_jax.data.tokenizers.ByteTokenizer` for the
from-scratch decoder, the loaded checkpoints' `PretrainedTokenizer`, or a raw
`tokenizers.Tokenizer` (whose `encode` returns an `Encoding`; its `.ids` are used). `encode`
must not add special tokens: prompts are assembled from separately encoded pieces.
"""

from collections.abc import Sequence


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as a list of ints."""
    out = tokenizer.encode(text)
    ids = getattr(out, "ids", out)
    return [int(i) for i in ids]


def decode(tokenizer, ids: Sequence[int]) -> str:
    """Text of `ids`."""
    return tokenizer.decode([int(i) for i in ids])


def pad_id(tokenizer) -> int:
    """The tokenizer's padding id, or 0 when it has none (padding is never attended causally)."""
    value = getattr(tokenizer, "pad_id", None)
    return 0 if value is None else int(value)
