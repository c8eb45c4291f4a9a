"""Evaluation protocols of the decoder reproductions (`eval/claims.py`): perplexity vs length.

Protocols: "single forward" runs the first N + 1 tokens of each document once and reports
exp(mean NLL over the N targets) (one forward per length, so length-dependent scalings such as
dynamic NTK see the true length); "strided" is the sliding-window protocol of Press et al.
(`longctx_jax.eval.perplexity.strided_nll`); "stream" decodes token by token through a
StreamingLLM KV cache (`Decoder.decode`). Documents: the longest held-out (validation split)
documents of the stdlib corpus, the same for every model.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longctx_jax.data import ByteTokenizer, default_data_config, tokenized_documents
from longctx_jax.eval.perplexity import strided_nll
from longctx_jax.eval.scoring import EvalModel
from longctx_jax.losses import token_nll
from longctx_jax.models.kv_cache import KVCache


def eval_docs(num_docs: int, num_tokens: int) -> np.ndarray:
    """`[num_docs, num_tokens]` int32: the first tokens of the longest held-out documents."""
    docs = tokenized_documents(default_data_config(), ByteTokenizer(), "validation")
    lengths = np.diff(docs.starts)
    longest = np.argsort(-lengths, kind="stable")[:num_docs]
    if lengths[longest[-1]] < num_tokens:
        have = int((lengths >= num_tokens).sum())
        raise ValueError(f"only {have} held-out documents have {num_tokens} tokens, {num_docs} needed")
    return np.stack([docs.doc(int(d))[:num_tokens] for d in longest])


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


def strided_ppl(module: nnx.Module, docs_NL: np.ndarray, window: int, stride: int) -> float:
    """Sliding-window (window, stride) perplexity over whole documents `[N_docs, L]`."""
    model = EvalModel(module)
    return math.exp(float(np.mean([strided_nll(model, d, window=window, stride=stride) for d in docs_NL])))


def stream_ppl(module: nnx.Module, docs_NL: np.ndarray, cache_size: int, sinks: int) -> dict:
    """Token-by-token decoding through a StreamingLLM cache; perplexity per eighth of the stream.

    Args:
      module: a `Decoder`.
      docs_NL: token ids `[N_docs, L]`; the L - 1 targets are decoded one at a time.
      cache_size: KV cache capacity (sinks + recent window).
      sinks: attention-sink tokens kept at the start of the cache.

    Returns:
      {"ppl": over all targets, "ppl_by_eighth": eight perplexities along the stream}.
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

    nll = np.asarray(nll_TB(state, jnp.asarray(docs_NL[:, :-1]), jnp.asarray(docs_NL[:, 1:])))
    eighths = np.array_split(nll, 8)
    return {"ppl": math.exp(float(nll.mean())), "ppl_by_eighth": [math.exp(float(e.mean())) for e in eighths]}


def ppl_ratio(ppl: dict[str, float], lengths: Sequence[int]) -> float:
    """Perplexity at the longest length over perplexity at the shortest."""
    return ppl[str(lengths[-1])] / ppl[str(lengths[0])]
