"""Evaluation protocols of the decoder reproductions (`eval/claims.py`): perplexity vs length.

Protocols: "full" runs the first N + 1 tokens of each window once and reports
exp(mean NLL over the N targets) (one forward per length, so length-dependent scalings such as
dynamic NTK see the true length); "chunked" scores the same targets restarting the context every
L tokens (context never beyond L: the same-token control of "full"); "stream"
decodes token by token through a StreamingLLM KV cache (`Decoder.decode`). Documents: windows
of single held-out (validation split) documents of the stdlib corpus (`eval_windows`), the same
for every model; `block_series` turns per-target NLLs into the per-document block NLLs that
`eval/verdicts.py` compares.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longctx_jax.data import ByteTokenizer, default_data_config, tokenized_documents
from longctx_jax.eval.intervals import block_means
from longctx_jax.eval.scoring import EvalModel
from longctx_jax.losses import token_nll
from longctx_jax.models.kv_cache import KVCache


def eval_windows(num_windows: int, num_tokens: int) -> tuple[np.ndarray, list[str]]:
    """Non-overlapping windows of `num_tokens` tokens, each inside one held-out document.

    Documents are taken longest first, round robin: the first window of every document long
    enough, then the second windows, until `num_windows`.

    Returns:
      (tokens `[num_windows, num_tokens]` int32, the document id "doc<index>" of each window).
    """
    if num_windows <= 0 or num_tokens <= 1:
        raise ValueError(f"need num_windows >= 1 and num_tokens >= 2, got {num_windows}, {num_tokens}")
    docs = tokenized_documents(default_data_config(), ByteTokenizer(), "validation")
    lengths = np.diff(docs.starts)
    order = np.argsort(-lengths, kind="stable")
    fits = lengths[order] // num_tokens
    if fits.sum() < num_windows:
        raise ValueError(f"the held-out documents hold {int(fits.sum())} windows of {num_tokens} tokens, "
                         f"{num_windows} needed")
    picked = []
    for k in range(int(fits.max())):
        picked += [(int(d), k) for d, f in zip(order, fits, strict=True) if f > k]
    picked = picked[:num_windows]
    tokens = np.stack([docs.doc(d)[k * num_tokens:(k + 1) * num_tokens] for d, k in picked]).astype(np.int32)
    return tokens, [f"doc{d}" for d, _ in picked]


def target_nll(module: nnx.Module | EvalModel, windows_WN: np.ndarray, length: int, protocol: str,
               train_len: int, batch: int = 4) -> np.ndarray:
    """Per-target NLL `[W, length]` of targets 1..length of each window.

    Args:
      module: a causal decoder (or its `EvalModel`, reused across calls).
      windows_WN: token ids `[W, N]`, N > length.
      length: targets scored per window.
      protocol: "full" (one forward of `length` tokens) or "chunked" (forwards of `train_len`
        tokens: each target sees at most `train_len` tokens, its own chunk).
      train_len: the chunk of "chunked"; `length` must be a multiple of it.
      batch: windows per forward.
    """
    if protocol not in ("full", "chunked"):
        raise ValueError(f"protocol {protocol!r} not in ('full', 'chunked')")
    if length >= windows_WN.shape[1]:
        raise ValueError(f"length {length} needs windows of {length + 1} tokens, got {windows_WN.shape[1]}")
    if protocol == "chunked" and length % train_len:
        raise ValueError(f"chunked length {length} is not a multiple of train_len {train_len}")
    model = module if isinstance(module, EvalModel) else EvalModel(module)
    tokens, targets = windows_WN[:, :length], windows_WN[:, 1 : length + 1]
    if protocol == "chunked":
        tokens, targets = tokens.reshape(-1, train_len), targets.reshape(-1, train_len)
    nll = np.concatenate([model.token_nll(tokens[i : i + batch], targets[i : i + batch])
                          for i in range(0, tokens.shape[0], batch)])
    return nll.reshape(windows_WN.shape[0], length)


def block_series(nll_WT: np.ndarray, doc_ids: Sequence[str], block: int) -> dict[str, list[float]]:
    """{document: block NLLs of its windows, in order} (`intervals.block_means` per window)."""
    if len(doc_ids) != nll_WT.shape[0]:
        raise ValueError(f"{len(doc_ids)} document ids for {nll_WT.shape[0]} windows")
    out: dict[str, list[float]] = {}
    for doc, nll_T in zip(doc_ids, nll_WT, strict=True):
        out.setdefault(doc, []).extend(round(float(b), 6) for b in block_means(nll_T, block))
    return out


def ppl_vs_length(module: nnx.Module, docs_NL: np.ndarray, lengths: Sequence[int]) -> dict[str, float]:
    """Single-forward perplexity at each length N (targets 1 .. N of each document).

    Args:
      module: a causal decoder.
      docs_NL: token ids `[N_docs, L]`, L > max(lengths).
      lengths: the evaluated lengths.

    Returns:
      {str(N): perplexity}.
    """
    if max(lengths) >= docs_NL.shape[1]:
        raise ValueError(f"length {max(lengths)} needs documents of {max(lengths) + 1} tokens, "
                         f"got {docs_NL.shape[1]}")
    model, out = EvalModel(module), {}
    for n in lengths:
        nll = model.token_nll(docs_NL[:, :n], docs_NL[:, 1 : n + 1])
        out[str(n)] = math.exp(float(nll.mean()))
    return out


def stream_nll(module: nnx.Module, docs_NL: np.ndarray, cache_size: int, sinks: int) -> np.ndarray:
    """Per-target NLL `[N_docs, L - 1]` of token-by-token decoding through a StreamingLLM cache.

    Args:
      module: a `Decoder`.
      docs_NL: token ids `[N_docs, L]`; the L - 1 targets are decoded one at a time.
      cache_size: KV cache capacity (sinks + recent window).
      sinks: attention-sink tokens kept at the start of the cache.
    """
    graphdef, state = nnx.split(module)
    cfg = module.cfg

    @jax.jit
    def nll_TB(state, tokens_BT, targets_BT):
        decoder = nnx.merge(graphdef, state)
        cache = KVCache.create(num_layers=cfg.num_layers, batch=tokens_BT.shape[0], capacity=cache_size,
                               num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, streaming=True,
                               sinks=sinks)

        def body(cache, xs):
            tok_B, tgt_B = xs
            logits, cache = decoder.decode(tok_B[:, None], cache)
            return cache, token_nll(logits[:, 0], tgt_B)

        return jax.lax.scan(body, cache, (tokens_BT.T, targets_BT.T))[1]

    return np.asarray(nll_TB(state, jnp.asarray(docs_NL[:, :-1]), jnp.asarray(docs_NL[:, 1:]))).T


def stream_ppl(module: nnx.Module, docs_NL: np.ndarray, cache_size: int, sinks: int) -> dict:
    """`stream_nll` as {"ppl": over all targets, "ppl_by_eighth": eight perplexities along the stream}."""
    nll = stream_nll(module, docs_NL, cache_size, sinks).T
    eighths = np.array_split(nll, 8)
    return {"ppl": math.exp(float(nll.mean())), "ppl_by_eighth": [math.exp(float(e.mean())) for e in eighths]}

