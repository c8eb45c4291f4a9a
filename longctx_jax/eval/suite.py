"""The whole evaluation for one model: perplexity, passkey and needle sweeps, figures, report.

`evaluate_method(model, tokenizer, store, method=..., spec=...)` runs every sweep `spec` asks for
(perplexity, passkey, needle, the RULER-style suite) on
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

import jax
import numpy as np
from flax import nnx

from longctx_jax.data.stdlib_corpus import SPLITS
from longctx_jax.eval.choice import check_tasks as check_choice_tasks
from longctx_jax.eval.choice import choice_sweep
from longctx_jax.eval.corpus import python_version
from longctx_jax.eval.needle import DEPTHS, needle_sweep
from longctx_jax.eval.passkey import passkey_sweep
from longctx_jax.eval.perplexity import perplexity_sweep, strided_perplexity_sweep, summarize
from longctx_jax.eval.plots import write_figures
from longctx_jax.eval.report import write_report
from longctx_jax.eval.results import ResultStore, file_digest, fingerprint
from longctx_jax.eval.ruler import TASKS, check_cells, check_tasks, ruler_sweep
from longctx_jax.eval.scoring import as_eval_model


@dataclasses.dataclass(frozen=True)
class SuiteSpec:
    """Which sweeps to run and at which sizes (an empty length tuple skips a sweep).

    Attributes:
      ppl_lengths: single-forward perplexity lengths.
      ppl_num_docs: documents per perplexity length.
      ppl_split: "" for the corpus's documents in order; "validation" for only those held out of
        the stdlib training corpus's train split at `ppl_val_fraction` (`corpus.long_documents`):
        the documents a model fine-tuned on that corpus never saw.
      ppl_val_fraction: that training corpus's validation share (`config.data.val_fraction`).
      strided_windows: sliding-window protocol evaluation windows.
      strided_stride: sliding-window stride.
      strided_doc_length: document length (targets) of the sliding-window protocol.
      passkey_lengths, passkey_depths, passkey_trials: the passkey grid.
      niah_lengths, niah_depths, niah_trials: the needle-in-a-haystack grid.
      ruler_tasks, ruler_lengths, ruler_trials: the RULER-style suite (`eval/ruler.py`): task
        names from `ruler.TASKS`, lengths (prompt + generation), seeded prompts per cell.
      choice_tasks, choice_examples, choice_data_dir: multiple-choice tasks read from a prepared
        TFDS dataset (`eval/choice.py`, e.g. "hellaswag"), records scored, TFDS data directory.
      seed: base seed of the retrieval and RULER prompts.
      batch_tokens: tokens per forward in the retrieval sweeps (batch = batch_tokens // length).
    """

    ppl_lengths: tuple[int, ...] = ()
    ppl_num_docs: int = 1
    ppl_split: str = ""
    ppl_val_fraction: float = 0.05
    strided_windows: tuple[int, ...] = ()
    strided_stride: int = 256
    strided_doc_length: int = 0
    passkey_lengths: tuple[int, ...] = ()
    passkey_depths: tuple[float, ...] = (0.0, 0.5, 1.0)
    passkey_trials: int = 1
    niah_lengths: tuple[int, ...] = ()
    niah_depths: tuple[float, ...] = DEPTHS
    niah_trials: int = 1
    ruler_tasks: tuple[str, ...] = tuple(TASKS)
    ruler_lengths: tuple[int, ...] = ()
    ruler_trials: int = 1
    choice_tasks: tuple[str, ...] = ()
    choice_examples: int = 200
    choice_data_dir: str = ""
    seed: int = 0
    batch_tokens: int = 16384

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "SuiteSpec":
        """From a config block; raises ValueError naming unknown fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown eval fields {unknown}; valid: {sorted(known)}")
        spec = cls(**{k: tuple(v) if isinstance(v, list | tuple) else v for k, v in values.items()})
        check_tasks(spec.ruler_tasks)
        check_choice_tasks(spec.choice_tasks)
        if spec.ppl_split not in ("", *SPLITS):
            raise ValueError(f"eval.ppl_split {spec.ppl_split!r} is not '' (all documents) or one of "
                             f"{SPLITS}")
        if not 0.0 <= spec.ppl_val_fraction < 1.0:
            raise ValueError(f"eval.ppl_val_fraction must be in [0, 1), got {spec.ppl_val_fraction}")
        return spec


def run_inputs(checkpoint: str | os.PathLike, tokenizer, *, train_length: int, target_length: int,
               factor: float, dtype: str, model_key: str | None = None) -> dict[str, Any]:
    """The run-level inputs of an evaluation that every stored row depends on.

    Args:
      checkpoint: the weights (a GGUF file or a checkpoint directory), identified by content.
      tokenizer: the tokenizer (identified by type and vocabulary size; the rows' `data_key`
        fingerprints the token ids themselves).
      train_length: the model's pretraining context.
      target_length: the length the scaling factor extends to.
      factor: the RoPE scaling factor of the scaled methods.
      dtype: activation dtype.
      model_key: the weights' content key when the caller identified them (a fine-tuned
        model: base digest + restored weights); None: the digest of `checkpoint`.

    Returns:
      A JSON-able mapping for `ResultStore(..., inputs=...)` (the store adds `PROTOCOL_VERSION`).
    """
    return {"model_sha256": model_key or file_digest(checkpoint), "train_length": int(train_length),
            "target_length": int(target_length), "factor": float(factor), "dtype": str(dtype),
            "tokenizer": f"{type(tokenizer).__name__}/{getattr(tokenizer, 'vocab_size', None)}",
            "corpus": f"python-{python_version()}-stdlib"}


def evaluate_method(model, tokenizer, store: ResultStore, *, method: str, spec: SuiteSpec,
                    inputs: Mapping[str, Any] | None = None, progress: bool = True) -> None:
    """Runs every sweep of `spec` for one model under the label `method`.

    Args:
      model: `EvalModel`, NNX module or logits callable.
      tokenizer: `encode`/`decode` tokenizer.
      store: results file; finished cells computed from the same inputs are skipped.
      method: label of the extension method.
      spec: the sweeps and their sizes.
      inputs: the method's configuration (e.g. its `ModelConfig` changes); rows of `method`
        stored under other inputs are discarded and recomputed (`ResultStore.bind_method`).
      progress: show progress bars.
    """
    if spec.ruler_lengths and spec.ruler_tasks:  # a bad task or too short a length fails before any work
        check_cells(tokenizer, spec.ruler_tasks, spec.ruler_lengths, seed=spec.seed)
    if inputs is not None:
        store.bind_method(method, inputs)
    em = as_eval_model(model)
    if spec.ppl_lengths:
        perplexity_sweep(em, tokenizer, store, method=method, lengths=list(spec.ppl_lengths),
                         num_docs=spec.ppl_num_docs, split=spec.ppl_split,
                         val_fraction=spec.ppl_val_fraction, progress=progress)
    if spec.strided_windows:
        strided_perplexity_sweep(em, tokenizer, store, method=method, windows=list(spec.strided_windows),
                                 stride=spec.strided_stride, doc_length=spec.strided_doc_length,
                                 num_docs=spec.ppl_num_docs, progress=progress)
    # retrieval and RULER get the model itself: a `Decoder` scores each trial from one KV-cache prefill
    if spec.passkey_lengths:
        passkey_sweep(model, tokenizer, store, method=method, lengths=list(spec.passkey_lengths),
                      depths=list(spec.passkey_depths), trials=spec.passkey_trials, seed=spec.seed,
                      batch_tokens=spec.batch_tokens, progress=progress)
    if spec.niah_lengths:
        needle_sweep(model, tokenizer, store, method=method, lengths=list(spec.niah_lengths),
                     depths=list(spec.niah_depths), trials=spec.niah_trials, seed=spec.seed,
                     batch_tokens=spec.batch_tokens, progress=progress)
    if spec.ruler_lengths and spec.ruler_tasks:
        ruler_sweep(model, tokenizer, store, method=method, tasks=spec.ruler_tasks,
                    lengths=list(spec.ruler_lengths), trials=spec.ruler_trials, seed=spec.seed,
                    progress=progress)
    for task in spec.choice_tasks:
        choice_sweep(em, tokenizer, store, method=method, task=task, num_examples=spec.choice_examples,
                     data_dir=spec.choice_data_dir or None, progress=progress)


def finalize(store: ResultStore, workdir: str | os.PathLike, *, notes: str = "") -> list[str]:
    """Writes the perplexity intervals into the results file (`perplexity_intervals`, keyed
    "method@length": `perplexity.summarize` of the stored rows), then the figures and report.md
    into `workdir`; returns their paths."""
    os.makedirs(workdir, exist_ok=True)
    if store.records("perplexity"):
        store.update_meta({"perplexity_intervals": {f"{s['method']}@{s['length']}": s
                                                    for s in summarize(store.records("perplexity"))}})
    figures = write_figures(store.data, workdir)
    report = os.path.join(workdir, "report.md")
    write_report(store.data, report, figures=figures, notes=notes)
    return [*figures, report]


def parameters_digest(model: nnx.Module) -> str:
    """Fingerprint of every array of an NNX module's state (its weights, by value)."""
    return fingerprint([np.asarray(x) for x in jax.tree.leaves(nnx.state(model))])


def evaluate_checkpoint(model, tokenizer, workdir: str | os.PathLike, spec: SuiteSpec, *, name: str,
                        train_length: int, method: str = "none", progress: bool = True) -> ResultStore:
    """Evaluates one model (e.g. a from-scratch decoder + byte tokenizer) into `workdir`.

    Writes results.json (resuming it if present), the figures and report.md. For an NNX module
    the run inputs are its weights (by value), `train_length` and the tokenizer, so a rerun
    into the same workdir with another checkpoint refuses (`InputsChanged`) instead of mixing.
    """
    inputs = None
    if isinstance(model, nnx.Module):
        inputs = {"parameters": parameters_digest(model), "train_length": int(train_length),
                  "tokenizer": f"{type(tokenizer).__name__}/{getattr(tokenizer, 'vocab_size', None)}"}
    store = ResultStore(os.path.join(workdir, "results.json"), inputs=inputs,
                        meta={"model": name, "train_length": train_length})
    evaluate_method(model, tokenizer, store, method=method, spec=spec, progress=progress)
    finalize(store, workdir)
    return store
