"""Perplexity against context length, two protocols.

Documents are whole single files (`eval.corpus.long_documents`: a prose document and stdlib
code files, BOS first where the tokenizer adds one); a length-N cell scores the first N
targets of one file, never a window across two files.

1. Single forward at length N (the "does the model use positions beyond training" probe): run
   the first N + 1 tokens of each document once and record, per document, the mean next-token
   NLL over all N targets, over the last quarter (positions 3N/4 .. N-1, where an extension
   method that fails shows first), and per block of 256 targets; `summarize` turns the blocks
   into the mean over documents with a stratified block-bootstrap 95 % interval and the paired
   difference to the unscaled model on the same positions (`eval.intervals`). Shorter lengths
   use prefixes of the same documents. For a causal model whose position
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

from longctx_jax.eval.corpus import documents, long_documents
from longctx_jax.eval.intervals import block_means, resample_indices, stratified_interval
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
    split: str = "",
    val_fraction: float = 0.05,
    batch_size: int = 1,
    share_prefix: bool | None = None,
    progress: bool = True,
) -> list[dict]:
    """Single-forward perplexity of each whole document at each length, one row per cell.

    Args:
      model: the model (`EvalModel`, NNX module or logits callable).
      tokenizer: a `longctx_jax.data.Tokenizer` (`encode`/`decode`).
      store: results file; (method, length, document) cells already recorded on the same token
        ids are skipped, a row recorded on other ids (tokenizer, corpus) is replaced.
      method: label of the extension method ("none", "yarn", "streaming", ...).
      lengths: context lengths N (number of scored targets: the first N + 1 tokens of a document).
      num_docs: documents (`corpus.long_documents` of at least max(lengths) + 1 tokens).
      split, val_fraction: "" for the corpus in order, or only the documents of that split of
        the stdlib training corpus (`corpus.long_documents`; "validation": held out).
      batch_size: documents per forward.
      share_prefix: derive shorter lengths from the longest forward (default: unless the
        method is in `LENGTH_DEPENDENT`).

    Returns:
      The new records: {"method", "length", "doc", "doc_kind", "nll", "nll_last_quarter",
      "nll_by_eighth", "block_nll" (mean NLL of each `intervals.BLOCK` targets, for the
      bootstrap), "data_key"}, `data_key` being the fingerprint of the scored ids `doc[:length + 1]`.
    """
    em = as_eval_model(model)
    if share_prefix is None:
        share_prefix = method not in LENGTH_DEPENDENT
    docs = long_documents(tokenizer, max(lengths) + 1, num_docs, split=split, val_fraction=val_fraction)
    ids = np.stack([d.ids[: max(lengths) + 1] for d in docs])
    keys = {(n, i): fingerprint(ids[i, : n + 1]) for n in set(lengths) for i in range(len(docs))}
    missing = {(n, i) for (n, i), key in keys.items()
               if not store.has("perplexity", method=method, length=n, doc=docs[i].name, data_key=key)}
    todo = sorted({n for n, _ in missing})
    if not todo:
        return []
    groups = [todo] if share_prefix else [[n] for n in todo]
    new = []
    for group in tqdm(groups, desc=f"ppl {method}", disable=not progress):
        longest = max(group)
        nll_NT = document_nll(em, ids[:, : longest + 1], batch_size=batch_size)
        for n in group:
            for i, doc in enumerate(docs):
                if (n, i) not in missing:
                    continue
                record = {"method": method, "length": n, "doc": doc.name, "doc_kind": doc.kind,
                          **nll_stats(nll_NT[i : i + 1, :n]),
                          "block_nll": [float(b) for b in block_means(nll_NT[i, :n])],
                          "data_key": keys[(n, i)]}
                store.put("perplexity", record, cell=("method", "length", "doc"))
                new.append(record)
    return new


def summarize(records: list[dict], *, reference: str | None = "none", seed: int = 0) -> list[dict]:
    """Per (method, length): the mean NLL over documents with a bootstrap interval, and the
    paired difference to `reference` on the same documents and positions (see `intervals`).

    Args:
      records: "perplexity" rows (`perplexity_sweep`).
      reference: method every other is compared with (skipped when absent).
      seed: bootstrap seed.

    Returns:
      One dict per (method, length) in the records' order: {"method", "length", "docs", "nll",
      "nll_lo", "nll_hi", "ppl", "ppl_lo", "ppl_hi", "per_doc": {doc: ppl}, and when a reference
      row set exists: "delta_nll", "delta_lo", "delta_hi" (method minus reference)}.
    """
    cells = list(dict.fromkeys((r["method"], r["length"]) for r in records))
    by_cell = {c: sorted((r for r in records if (r["method"], r["length"]) == c), key=lambda r: r["doc"])
               for c in cells}
    out = []
    for method, length in cells:
        rows = by_cell[(method, length)]
        blocks = [np.asarray(r.get("block_nll", [r["nll"]])) for r in rows]
        indices = resample_indices([b.size for b in blocks], seed=seed)
        ci = stratified_interval(blocks, indices=indices)
        summary = {"method": method, "length": length, "docs": [r["doc"] for r in rows],
                   "nll": ci["mean"], "nll_lo": ci["lo"], "nll_hi": ci["hi"],
                   "ppl": float(np.exp(ci["mean"])), "ppl_lo": float(np.exp(ci["lo"])),
                   "ppl_hi": float(np.exp(ci["hi"])),
                   "per_doc": {r["doc"]: float(np.exp(r["nll"])) for r in rows}}
        ref = by_cell.get((reference, length))
        if ref is not None and method != reference and [r["doc"] for r in ref] == summary["docs"]:
            ref_blocks = [np.asarray(r.get("block_nll", [r["nll"]])) for r in ref]
            if all(a.shape == b.shape for a, b in zip(blocks, ref_blocks, strict=True)):
                diff = stratified_interval([a - b for a, b in zip(blocks, ref_blocks, strict=True)],
                                           indices=indices)
                summary.update(delta_nll=diff["mean"], delta_lo=diff["lo"], delta_hi=diff["hi"])
        out.append(summary)
    return out


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
