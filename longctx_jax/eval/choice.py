"""Multiple-choice tasks read from TFDS (e.g. HellaSwag): the retention probe for users with data.

Context extension should cost nothing where no extension is needed. Perplexity at <= 2K tokens
(`report.reading`) measures that on raw text; a multiple-choice benchmark measures it on a task.
The task interface is the same as every other sweep's: `choice_sweep(model, tokenizer, store,
method=..., task=...)` writes one row per (method, task) into `store["choice"]`, keyed by the
exact token ids it scored.

Scoring, as in EleutherAI's lm-evaluation-harness (Gao et al. 2021) for HellaSwag (Zellers et
al. 2019): for an example with context c, endings e_1..e_k and gold label y,

    ll_i     = sum over the tokens t of e_i of log p(t | prompt_prefix, c, e_i's earlier tokens)
    acc      = [argmax_i ll_i == y]
    acc_norm = [argmax_i ll_i / bytes(e_i) == y]          (length-normalized)

with each ending preceded by a space, and HellaSwag's text cleaned as the harness cleans it
(" [title]" becomes ". ", other bracketed tags are dropped, double spaces collapsed). The
interval is a percentile bootstrap over examples (`eval.intervals`).

Data: `tfds.data_source(name, split=..., data_dir=..., download=False)` reads a dataset the
user prepared as array_record (no TensorFlow, no network at run time): prepare it once on a
machine with network with `tfds build hellaswag --file_format=array_record --data_dir=DIR`.
"""

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from longctx_jax.data.tokenizers import Tokenizer, prompt_prefix
from longctx_jax.eval.intervals import stratified_interval
from longctx_jax.eval.results import ResultStore, fingerprint
from longctx_jax.eval.scoring import as_eval_model, bucket_length


def clean_hellaswag(text: str) -> str:
    """lm-evaluation-harness's HellaSwag `preprocess`: tags out, spacing fixed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


@dataclasses.dataclass(frozen=True)
class ChoiceTask:
    """Where a multiple-choice task's fields live in its TFDS records.

    Attributes:
      dataset: TFDS name.
      split: TFDS split (slicing allowed, e.g. "validation[:500]").
      context: feature holding the context text.
      choices: feature holding the sequence of candidate endings.
      label: feature holding the index of the gold ending.
      clean: text cleaning applied to context and endings.
    """

    dataset: str
    split: str
    context: str
    choices: str
    label: str
    clean: Any = None


TASKS: dict[str, ChoiceTask] = {
    "hellaswag": ChoiceTask("hellaswag", "validation", "context", "endings", "label", clean_hellaswag),
}


def check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """`tasks` as a tuple; raises ValueError naming unknown tasks and the valid ones."""
    if isinstance(tasks, str):
        raise ValueError(f"choice tasks must be a tuple of names, got the string {tasks!r}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown multiple-choice task(s) {unknown}; valid: {sorted(TASKS)}")
    return tuple(tasks)


def load_source(task: str, data_dir: str | None) -> Sequence[Mapping[str, Any]]:
    """The prepared TFDS records of `task` (random access, array_record).

    Raises:
      ValueError: the task is unknown, or the dataset is not prepared under `data_dir`.
    """
    check_tasks([task])
    import tensorflow_datasets as tfds  # imported on use: only this sweep needs it

    spec = TASKS[task]
    try:
        return tfds.data_source(spec.dataset, split=spec.split, data_dir=data_dir or None, download=False)
    except Exception as error:  # TFDS raises several types for "not prepared here"
        raise ValueError(
            f"TFDS dataset {spec.dataset!r} (split {spec.split!r}) is not prepared under data_dir "
            f"{data_dir!r}: prepare it once with network access, `tfds build {spec.dataset} "
            f"--file_format=array_record --data_dir=DIR`, then pass that DIR ({error})") from error


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def encode_example(tokenizer: Tokenizer, task: ChoiceTask, record: Mapping[str, Any]
                   ) -> tuple[list[int], list[list[int]], int, list[int]]:
    """(context ids with BOS rule, ids of each ending, gold label, byte length of each ending)."""
    clean = task.clean or (lambda s: s)
    context = prompt_prefix(tokenizer) + tokenizer.encode(clean(_text(record[task.context])))
    endings = [" " + clean(_text(e)) for e in record[task.choices]]
    label = int(record[task.label])
    if not 0 <= label < len(endings):
        raise ValueError(f"label {label} is not an index of the {len(endings)} endings")
    return context, [tokenizer.encode(e) for e in endings], label, [len(e.encode("utf-8")) for e in endings]


def choice_loglikelihoods(model, context: list[int], endings: list[list[int]], *, pad_id: int = 0
                          ) -> np.ndarray:
    """Sum of log p(ending tokens | context, earlier ending tokens) per ending, float64 `[k]`.

    All endings run as one batch of `bucket_length` padded sequences (right padding is invisible
    to a causal model).
    """
    em = as_eval_model(model)
    if not context or any(not e for e in endings):
        raise ValueError("context and every ending need at least one token")
    seqs = [context + e for e in endings]
    T = bucket_length(max(len(s) for s in seqs) - 1)
    tokens = np.full((len(seqs), T), pad_id, np.int32)
    targets = np.full((len(seqs), T), pad_id, np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s) - 1] = s[:-1]
        targets[i, : len(s) - 1] = s[1:]
    nll = em.token_nll(tokens, targets)
    return np.array([-float(nll[i, len(context) - 1 : len(seqs[i]) - 1].sum()) for i in range(len(seqs))])


def choice_sweep(model, tokenizer: Tokenizer, store: ResultStore, *, method: str, task: str,
                 num_examples: int, data_dir: str | None = None,
                 source: Sequence[Mapping[str, Any]] | None = None, progress: bool = True) -> dict | None:
    """Accuracy of one model on the first `num_examples` records of a task, into `store["choice"]`.

    Args:
      model: `EvalModel`, NNX module or logits callable.
      tokenizer: the model's tokenizer.
      store: results file; the (method, task) row on the same token ids is kept, not rerun.
      method: label of the extension method.
      task: a name in `TASKS`.
      num_examples: records scored (the first ones of the split).
      data_dir: TFDS data directory holding the prepared dataset.
      source: the records themselves (instead of reading TFDS), e.g. a list of dicts.

    Returns:
      The new row {"method", "task", "num_examples", "acc", "acc_lo", "acc_hi", "acc_norm",
      "acc_norm_lo", "acc_norm_hi", "data_key"}, or None if it was already stored.
    """
    check_tasks([task])
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    records = source if source is not None else load_source(task, data_dir)
    if len(records) < num_examples:
        raise ValueError(f"task {task!r} has {len(records)} records, fewer than num_examples={num_examples}")
    spec = TASKS[task]
    examples = [encode_example(tokenizer, spec, records[i]) for i in range(num_examples)]
    key = fingerprint([[np.asarray(c), [np.asarray(e) for e in ends], y] for c, ends, y, _ in examples])
    if store.has("choice", method=method, task=task, data_key=key):
        return None
    hits, hits_norm = [], []
    pad = int(getattr(tokenizer, "pad_id", 0))
    for context, endings, label, nbytes in tqdm(examples, desc=f"{task} {method}", disable=not progress):
        ll = choice_loglikelihoods(model, context, endings, pad_id=pad)
        hits.append(float(np.argmax(ll) == label))
        hits_norm.append(float(np.argmax(ll / np.asarray(nbytes)) == label))
    acc, acc_norm = stratified_interval([np.array(hits)]), stratified_interval([np.array(hits_norm)])
    row = {"method": method, "task": task, "num_examples": num_examples,
           "acc": acc["mean"], "acc_lo": acc["lo"], "acc_hi": acc["hi"],
           "acc_norm": acc_norm["mean"], "acc_norm_lo": acc_norm["lo"], "acc_norm_hi": acc_norm["hi"],
           "data_key": key}
    store.put("choice", row, cell=("method", "task"))
    return row
