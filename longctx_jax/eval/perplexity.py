"""Perplexity against context length, two protocols.

1. Single forward at length N (the "does the model use positions beyond training" probe): run
   N tokens of a long document once and report the mean next-token NLL over all N targets and
   over the last quarter (positions 3N/4 .. N-1), where an extension method that fails shows
   first. Shorter lengths use prefixes of the same documents. For a causal model whose position
   handling does not depend on the sequence length (plain RoPE, PI, NTK, YaRN, Llama 3,
   sliding windows and sinks), the NLL at position t is the same in every forward of length
   > t, so with `share_prefix=True` one forward at the longest length yields every shorter
   length exactly; "dynamic" and "longrope", whose frequencies depend on the length, must run
   with `share_prefix=False` (see `LENGTH_DEPENDENT`).

2. Strided sliding window (Press et al. 2022, used by Position Interpolation, Chen et al.
   2023, and YaRN, Peng et al. 2023) at evaluation window W and stride S over a document of L
   targets: windows start at 0, S, 2S, ...; the window [b, min(b + W, L)) scores only the
   targets not scored by an earlier window, i.e. [prev_end, end); it stops when end == L. Each
   target is scored once with at least W - S tokens of context (except in the first window):

       nll = sum over windows of sum_{t in [prev_end, end)} -log p(x_{t+1} | x_{b..t}) / L
"""

import numpy as np
from tqdm.auto import tqdm

from longctx_jax.eval.corpus import documents
from longctx_jax.eval.results import ResultStore, fingerprint
from longctx_jax.eval.scoring import EvalModel, as_eval_model
from longctx_jax.positional.rope_types import LENGTH_DEPENDENT_TYPES

# Methods whose RoPE frequencies follow the sequence length (from the RoPE-type table).
LENGTH_DEPENDENT = LENGTH_DEPENDENT_TYPES
NUM_SEGMENTS = 8


def nll_stats(nll_NT: np.ndarray) -> dict[str, float | list[float]]:
    """Mean NLL over all positions, over the last quarter, and per eighth of the positions."""
    T = nll_NT.shape[1]
    segments = np.array_split(np.arange(T), NUM_SEGMENTS)
    return {
        "nll": float(nll_NT.mean()),
        "nll_last_quarter": float(nll_NT[:, (3 * T) // 4 :].mean()),
        "nll_by_eighth": [float(nll_NT[:, s].mean()) for s in segments if s.size],
    }


def document_nll(model: EvalModel, docs_NL1: np.ndarray, *, batch_size: int = 1) -> np.ndarray:
    """Per-target NLL `[N, L]` of documents of L + 1 tokens, one forward per batch."""
    em = as_eval_model(model)
    out = []
    for lo in range(0, docs_NL1.shape[0], batch_size):
        batch = docs_NL1[lo : lo + batch_size]
        n = batch.shape[0]
        if n < batch_size:  # keep one compiled shape: pad the batch with copies
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, axis=0)])
        out.append(em.token_nll(batch[:, :-1], batch[:, 1:])[:n])
    return np.concatenate(out)


def perplexity_sweep(
    model,
    tokenizer,
    store: ResultStore,
    *,
    method: str,
    lengths: list[int],
    num_docs: int = 1,
    batch_size: int = 1,
    share_prefix: bool | None = None,
    progress: bool = True,
) -> list[dict]:
    """Single-forward perplexity at each length, written to `store["perplexity"]` per cell.

    Args:
      model: the model (`EvalModel`, NNX module or logits callable).
      tokenizer: a `longctx_jax.data.Tokenizer` (`encode`/`decode`).
      store: results file; lengths already recorded for `method` on the same documents are
        skipped, a row recorded on other documents (tokenizer, `num_docs`, corpus) is replaced.
      method: label of the extension method ("none", "yarn", "streaming", ...).
      lengths: context lengths N (number of scored targets).
      num_docs: documents averaged per length.
      batch_size: documents per forward.
      share_prefix: derive shorter lengths from the longest forward (default: unless the
        method is in `LENGTH_DEPENDENT`).

    Returns:
      The new records: {"method", "length", "nll", "nll_last_quarter", "nll_by_eighth", "num_docs",
      "data_key"}, `data_key` being the fingerprint of the scored token ids `docs[:, :length + 1]`.
    """
    em = as_eval_model(model)
    if share_prefix is None:
        share_prefix = method not in LENGTH_DEPENDENT
    docs = documents(tokenizer, max(lengths) + 1, num_docs)
    keys = {n: fingerprint(docs[:, : n + 1]) for n in set(lengths)}
    todo = sorted(n for n in keys if not store.has("perplexity", method=method, length=n, data_key=keys[n]))
    if not todo:
        return []
    groups = [todo] if share_prefix else [[n] for n in todo]
    new = []
    for group in tqdm(groups, desc=f"ppl {method}", disable=not progress):
        longest = max(group)
        nll_NT = document_nll(em, docs[:, : longest + 1], batch_size=batch_size)
        for n in group:
            record = {"method": method, "length": n, **nll_stats(nll_NT[:, :n]), "num_docs": num_docs,
                      "data_key": keys[n]}
            store.put("perplexity", record, cell=("method", "length"))
            new.append(record)
    return new


def strided_windows(num_targets: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) of each window of the sliding-window protocol."""
    if window <= 0 or stride <= 0 or stride > window:
        raise ValueError(f"need 0 < stride <= window, got window {window} and stride {stride}")
    out, prev_end = [], 0
    for begin in range(0, num_targets, stride):
        end = min(begin + window, num_targets)
        out.append((begin, end, prev_end))
        prev_end = end
        if end == num_targets:
            break
    return out


def strided_nll(model, doc_L1: np.ndarray, *, window: int, stride: int, batch_size: int = 1,
                pad_id: int = 0) -> float:
    """Mean NLL of a document of L + 1 tokens under the strided sliding-window protocol."""
    em = as_eval_model(model)
    inputs, targets = doc_L1[:-1], doc_L1[1:]
    L = inputs.shape[0]
    windows = strided_windows(L, window, stride)
    width = min(window, L)
    tok = np.full((len(windows), width), pad_id, np.int32)
    tgt = np.full((len(windows), width), pad_id, np.int32)
    scored = np.zeros((len(windows), width), bool)
    for i, (begin, end, first) in enumerate(windows):
        tok[i, : end - begin] = inputs[begin:end]
        tgt[i, : end - begin] = targets[begin:end]
        scored[i, first - begin : end - begin] = True
    total = 0.0
    for lo in range(0, len(windows), batch_size):
        idx = np.arange(lo, lo + batch_size).clip(max=len(windows) - 1)
        nll = em.token_nll(tok[idx], tgt[idx])
        n = min(batch_size, len(windows) - lo)
        total += float(np.sum(nll[:n] * scored[idx][:n]))
    return total / L


def strided_perplexity_sweep(
    model,
    tokenizer,
    store: ResultStore,
    *,
    method: str,
    windows: list[int],
    stride: int,
    doc_length: int,
    num_docs: int = 1,
    batch_size: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Sliding-window perplexity per evaluation window, written to `store["perplexity_strided"]`.

    Returns:
      The new records: {"method", "length" (= window), "stride", "doc_length", "nll", "num_docs",
      "data_key"}; a row of the same (method, window) under another stride or documents is replaced.
    """
    em = as_eval_model(model)
    docs = documents(tokenizer, doc_length + 1, num_docs)
    new = []
    key = dict(method=method, stride=stride, doc_length=doc_length, data_key=fingerprint(docs))
    todo = [w for w in sorted(set(windows)) if not store.has("perplexity_strided", length=w, **key)]
    for w in tqdm(todo, desc=f"strided ppl {method}", disable=not progress):
        nll = float(np.mean([strided_nll(em, d, window=w, stride=min(stride, w), batch_size=batch_size)
                             for d in docs]))
        record = {"method": method, "length": w, "stride": stride, "doc_length": doc_length, "nll": nll,
                  "num_docs": num_docs, "data_key": key["data_key"]}
        store.put("perplexity_strided", record, cell=("method", "length"))
        new.append(record)
    return new
