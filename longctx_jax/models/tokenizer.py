"""Tokenizers of pretrained checkpoints, rebuilt with the `tokenizers` library.

Two sources, one class (`PretrainedTokenizer`):
  * a GGUF file: `tokenizer.ggml.tokens` + `merges` + `token_type` + special ids, and the
    pre-tokenizer named by `tokenizer.ggml.pre` (the regexes llama.cpp uses for that name);
  * a Hugging Face `tokenizer.json` (beside `*.safetensors`), with special ids from
    `tokenizer_config.json` / `config.json`.

Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`: GPT-2, SmolLM, Llama 3, Qwen2, ...) is
rebuilt from GGUF; SentencePiece GGUFs ("llama") should be loaded from their tokenizer.json.
Implements the data pipeline's `Tokenizer` protocol (longctx_jax/data/tokenizers.py): `encode`
never adds special tokens, `decode` drops them, so decode(encode(s)) == s for ordinary text,
and `token_bytes` gives the UTF-8 bytes of every id for bits-per-byte.
"""

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

# GPT-2's split regex, and those of the pre-tokenizers llama.cpp names in `tokenizer.ggml.pre`.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGITS_FIRST = ("smollm", "starcoder", "refact", "codeshell", "command-r")
_GPT2_PLAIN = ("default", "gpt2", "gpt-2", "mpt", "olmo", "jais")
_LLAMA3 = ("llama-bpe", "llama3", "smaug-bpe", "dbrx")
_QWEN2 = ("qwen2", "stablelm2")
SUPPORTED_PRE = _DIGITS_FIRST + _GPT2_PLAIN + _LLAMA3 + _QWEN2

# llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
_SPECIAL_TYPES = (3, 4)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (char -> byte)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    """The `tokenizers` pre-tokenizer equivalent to llama.cpp's `tokenizer.ggml.pre` name."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in _DIGITS_FIRST:
        splits = [pre_tokenizers.Digits(individual_digits=True),
                  pre_tokenizers.Split(Regex(_GPT2_REGEX), behavior="isolated")]
    elif pre in _GPT2_PLAIN:
        splits = [pre_tokenizers.Split(Regex(_GPT2_REGEX), behavior="isolated")]
    elif pre in _LLAMA3:
        splits = [pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated")]
    elif pre in _QWEN2:
        splits = [pre_tokenizers.Split(Regex(_QWEN2_REGEX), behavior="isolated")]
    else:
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r}; valid: {sorted(SUPPORTED_PRE)}")
    return pre_tokenizers.Sequence([*splits, byte_level])


class PretrainedTokenizer:
    """Text <-> token ids for a pretrained checkpoint; implements `longctx_jax.data.Tokenizer`.

    Attributes:
      name: identifier for cache keys (kind + a hash of the vocabulary).
      vocab_size: number of ids the model embeds (may exceed the tokenizer's own vocabulary).
      token_bytes: int32 `[vocab_size]`, UTF-8 bytes of each id (0 for special ids).
      bos_id, eos_id, pad_id: special ids (`pad_id` falls back to `eos_id`, then to 0: padding
        sits after the real tokens and is never attended causally).
      add_bos: whether the checkpoint expects `bos_id` before a prompt.
    """

    def __init__(self, tokenizer: Tokenizer, *, vocab_size: int, bos_id: int | None, eos_id: int | None,
                 pad_id: int | None = None, add_bos: bool = False):
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = int(next((i for i in (pad_id, eos_id) if i is not None), 0))
        self.add_bos = bool(add_bos)
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        digest = hashlib.sha1("\n".join(sorted(vocab)).encode()).hexdigest()[:12]
        self.name = f"bpe-{len(vocab)}-{digest}"
        self.token_bytes = self._token_bytes(vocab)

    def _token_bytes(self, vocab: Mapping[str, int]) -> np.ndarray:
        byte_of = _byte_decoder()
        special = {t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special}
        out = np.zeros((self.vocab_size,), np.int32)
        for piece, i in vocab.items():
            if i >= self.vocab_size or piece in special:
                continue
            if all(c in byte_of for c in piece):
                out[i] = len(piece)  # byte-level BPE: one stand-in character per byte
            else:
                out[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
        out.setflags(write=False)
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`; special ids are dropped."""
        return self.tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)

    def token(self, token_id: int) -> str:
        """The vocabulary string of one id (byte-level symbols, not decoded text)."""
        return self.tokenizer.id_to_token(int(token_id))

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any], *, vocab_size: int | None = None
                           ) -> "PretrainedTokenizer":
        """Rebuilds the tokenizer from GGUF key/values (`tokenizer.ggml.*`).

        Args:
          metadata: GGUF fields as Python values (see `llama.read_gguf`).
          vocab_size: the model's embedding rows (default: the number of tokens).
        """
        kind = metadata.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(
                f"unsupported GGUF tokenizer model {kind!r}; valid: 'gpt2' (byte-level BPE). "
                "Load SentencePiece checkpoints from their Hugging Face tokenizer.json instead"
            )
        tokens = list(metadata["tokenizer.ggml.tokens"])
        merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
        types = list(metadata.get("tokenizer.ggml.token_type", [1] * len(tokens)))
        vocab = {tok: i for i, tok in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ValueError(f"GGUF vocabulary has {len(tokens) - len(vocab)} duplicate tokens")
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        tok.pre_tokenizer = _byte_level_pre_tokenizer(metadata.get("tokenizer.ggml.pre", "default"))
        tok.decoder = decoders.ByteLevel()
        specials = [AddedToken(t, special=True, normalized=False)
                    for t, ty in zip(tokens, types, strict=True) if ty in _SPECIAL_TYPES]
        tok.add_special_tokens(specials)
        return cls(
            tok,
            vocab_size=len(tokens) if vocab_size is None else vocab_size,
            bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
            eos_id=metadata.get("tokenizer.ggml.eos_token_id"),
            pad_id=metadata.get("tokenizer.ggml.padding_token_id"),
            add_bos=metadata.get("tokenizer.ggml.add_bos_token", False),
        )

    @classmethod
    def from_hf_directory(cls, directory: str | os.PathLike, *, vocab_size: int | None = None
                          ) -> "PretrainedTokenizer":
        """Loads `tokenizer.json`; special ids from `tokenizer_config.json` or `config.json`."""
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.exists(path):
            raise ValueError(f"no tokenizer.json in {os.fspath(directory)!r}")
        tok = Tokenizer.from_file(path)
        config = _read_json(os.path.join(directory, "config.json"))
        tok_config = _read_json(os.path.join(directory, "tokenizer_config.json"))

        def special(name: str) -> int | None:
            value = tok_config.get(f"{name}_token")
            if isinstance(value, Mapping):
                value = value.get("content")
            if isinstance(value, str) and tok.token_to_id(value) is not None:
                return tok.token_to_id(value)
            value = config.get(f"{name}_token_id")
            return value[0] if isinstance(value, list) else value

        return cls(
            tok,
            vocab_size=tok.get_vocab_size() if vocab_size is None else vocab_size,
            bos_id=special("bos"),
            eos_id=special("eos"),
            pad_id=special("pad"),
            add_bos=tok_config.get("add_bos_token", False),
        )


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)
