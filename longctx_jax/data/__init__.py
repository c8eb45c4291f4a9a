"""Data: tokenizers, the TFDS stdlib/text-dir corpus, packing and deterministic batches."""

from longctx_jax.data.baseline import byte_unigram_baseline, unigram_bits_per_byte
from longctx_jax.data.batches import Batches, make_batches, tokenized_documents, validation_set
from longctx_jax.data.packing import BATCH_KEYS, TokenizedDocs, pack_windows, tokenize_documents
from longctx_jax.data.sources import DocumentSource, default_data_config, load_documents
from longctx_jax.data.stdlib_corpus import StdlibCorpus, stdlib_config, text_dir_config
from longctx_jax.data.tokenizers import ByteTokenizer, Tokenizer

__all__ = [
    "BATCH_KEYS",
    "Batches",
    "ByteTokenizer",
    "DocumentSource",
    "StdlibCorpus",
    "TokenizedDocs",
    "Tokenizer",
    "byte_unigram_baseline",
    "default_data_config",
    "load_documents",
    "make_batches",
    "pack_windows",
    "stdlib_config",
    "text_dir_config",
    "tokenize_documents",
    "tokenized_documents",
    "unigram_bits_per_byte",
    "validation_set",
]
