"""The whole evaluation for one model: perplexity, passkey and needle sweeps, figures, report.

`evaluate_method(model, tokenizer, store, method=..., spec=...)` runs every sweep `spec` asks for on
one model (skipping cells already in the results file), and `finalize(store, workdir)` writes
the figures and report.md. `evaluate_checkpoint` does both for a single model, e.g. a
from-scratch `Decoder` restored by the trainer with its `ByteTokenizer`:

    evaluate_checkpoint(model, ByteTokenizer(), "runs/tiny/eval", SuiteSpec(...),
                        name="tiny", train_length=512)

`eval/extension.py` calls `evaluate_method` once per extension method on the same results file.
"""

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from longctx_jax.eval.needle import DEPTHS, needle_sweep
from longctx_jax.eval.passkey import passkey_sweep
from longctx_jax.eval.perplexity import perplexity_sweep, strided_perplexity_sweep
from longctx_jax.eval.plots import write_figures
from longctx_jax.eval.report import write_report
from longctx_jax.eval.results import ResultStore
from longctx_jax.eval.scoring import as_eval_model


@dataclasses.dataclass(frozen=True)
class SuiteSpec:
    """Which sweeps to run and at which sizes (an empty length tuple skips a sweep).

    Attributes:
      ppl_lengths: single-forward perplexity lengths.
      ppl_num_docs: documents per perplexity length.
      strided_windows: sliding-window protocol evaluation windows.
      strided_stride: sliding-window stride.
      strided_doc_length: document length (targets) of the sliding-window protocol.
      passkey_lengths, passkey_depths, passkey_trials: the passkey grid.
      niah_lengths, niah_depths, niah_trials: the needle-in-a-haystack grid.
      seed: base seed of the retrieval prompts.
      batch_tokens: tokens per forward in the retrieval sweeps (batch = batch_tokens // length).
    """

    ppl_lengths: tuple[int, ...] = ()
    ppl_num_docs: int = 1
    strided_windows: tuple[int, ...] = ()
    strided_stride: int = 256
    strided_doc_length: int = 0
    passkey_lengths: tuple[int, ...] = ()
    passkey_depths: tuple[float, ...] = (0.0, 0.5, 1.0)
    passkey_trials: int = 1
    niah_lengths: tuple[int, ...] = ()
    niah_depths: tuple[float, ...] = DEPTHS
    niah_trials: int = 1
    seed: int = 0
    batch_tokens: int = 16384

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "SuiteSpec":
        """From a config block; raises ValueError naming unknown fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown eval fields {unknown}; valid: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list | tuple) else v for k, v in values.items()})


def evaluate_method(model, tokenizer, store: ResultStore, *, method: str, spec: SuiteSpec,
             progress: bool = True) -> None:
    """Runs every sweep of `spec` for one model under the label `method`."""
    em = as_eval_model(model)
    if spec.ppl_lengths:
        perplexity_sweep(em, tokenizer, store, method=method, lengths=list(spec.ppl_lengths),
                         num_docs=spec.ppl_num_docs, progress=progress)
    if spec.strided_windows:
        strided_perplexity_sweep(em, tokenizer, store, method=method, windows=list(spec.strided_windows),
                                 stride=spec.strided_stride, doc_length=spec.strided_doc_length,
                                 num_docs=spec.ppl_num_docs, progress=progress)
    if spec.passkey_lengths:
        passkey_sweep(em, tokenizer, store, method=method, lengths=list(spec.passkey_lengths),
                      depths=list(spec.passkey_depths), trials=spec.passkey_trials, seed=spec.seed,
                      batch_tokens=spec.batch_tokens, progress=progress)
    if spec.niah_lengths:
        needle_sweep(em, tokenizer, store, method=method, lengths=list(spec.niah_lengths),
                     depths=list(spec.niah_depths), trials=spec.niah_trials, seed=spec.seed,
                     batch_tokens=spec.batch_tokens, progress=progress)


def finalize(store: ResultStore, workdir: str | os.PathLike, *, notes: str = "") -> list[str]:
    """Writes the figures and report.md of a results file into `workdir`; returns their paths."""
    os.makedirs(workdir, exist_ok=True)
    figures = write_figures(store.data, workdir)
    report = os.path.join(workdir, "report.md")
    write_report(store.data, report, figures=figures, notes=notes)
    return [*figures, report]


def evaluate_checkpoint(model, tokenizer, workdir: str | os.PathLike, spec: SuiteSpec, *, name: str,
                        train_length: int, method: str = "none", progress: bool = True) -> ResultStore:
    """Evaluates one model (e.g. a from-scratch decoder + byte tokenizer) into `workdir`.

    Writes results.json (resuming it if present), the figures and report.md.
    """
    store = ResultStore(os.path.join(workdir, "results.json"),
                        meta={"model": name, "train_length": train_length})
    evaluate_method(model, tokenizer, store, method=method, spec=spec, progress=progress)
    finalize(store, workdir)
    return store
