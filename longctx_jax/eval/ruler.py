"""A RULER-style synthetic suite (Hsieh et al. 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?"), generated locally with no download.

Tasks (generators in `longctx_jax.eval.ruler_tasks`): niah_single, niah_multikey,
niah_multivalue, niah_multiquery (retrieval), vt (multi-hop variable tracking), cwe and fwe
(aggregation: common- and frequent-word extraction). Each trial is one seeded prompt of at
most `length - max_new_tokens` tokens, answered by greedy decoding of up to the task's
`max_new_tokens` (RULER's tokens_to_generate: 128 niah, 30 vt, 120 cwe, 50 fwe) from one
KV-cache prefill (`longctx_jax.eval.continuation`), and scored with RULER's metrics on the
decoded output (case-insensitive substring match):

    string_match_all(pred, refs)  = sum_r [r in pred] / |refs|     (fraction of refs found)
    string_match_part(pred, refs) = max_r [r in pred]              (any ref found)

RULER scores every task here with string_match_all (its `constants.py`; string_match_part
is its QA tasks' metric, offered here for the same task interface). A task's score is the
mean over trials, in [0, 1] (RULER reports it x 100). Both metrics only grow as the output
grows, so generation stops early once every reference is found (or at EOS) without changing
the score.

Results go to `store["ruler"]`, one row per (method, task, length): the mean score, each
trial's score, and the references and decoded output of every trial below 1.
"""

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from tqdm.auto import tqdm

from longctx_jax.data.tokenizers import Tokenizer
from longctx_jax.eval.continuation import ContinuationScorer
from longctx_jax.eval.results import ResultStore, fingerprint
from longctx_jax.eval.ruler_tasks import (
    RulerExample,
    common_words,
    frequent_words,
    niah,
    variable_tracking,
)
from longctx_jax.eval.scoring import bucket_length


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER's string_match_all for one output: the fraction of references it contains."""
    if not references:
        raise ValueError("string_match_all needs at least one reference")
    text = prediction.lower()
    return sum(r.lower() in text for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """RULER's string_match_part for one output: 1 if it contains any reference, else 0."""
    if not references:
        raise ValueError("string_match_part needs at least one reference")
    text = prediction.lower()
    return float(max(r.lower() in text for r in references))


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "string_match_all": string_match_all,
    "string_match_part": string_match_part,
}


@dataclasses.dataclass(frozen=True)
class RulerTask:
    """A generator `build(tokenizer, length, rng) -> RulerExample` and its metric's name."""

    build: Callable[[Tokenizer, int, np.random.Generator], RulerExample]
    metric: str


TASKS: dict[str, RulerTask] = {
    "niah_single": RulerTask(partial(niah, task="niah_single", num_keys=1, num_values=1, num_queries=1),
                             "string_match_all"),
    "niah_multikey": RulerTask(partial(niah, task="niah_multikey", num_keys=4, num_values=1, num_queries=1),
                               "string_match_all"),
    "niah_multivalue": RulerTask(partial(niah, task="niah_multivalue", num_keys=1, num_values=4,
                                         num_queries=1), "string_match_all"),
    "niah_multiquery": RulerTask(partial(niah, task="niah_multiquery", num_keys=4, num_values=1,
                                         num_queries=4), "string_match_all"),
    "vt": RulerTask(variable_tracking, "string_match_all"),
    "cwe": RulerTask(common_words, "string_match_all"),
    "fwe": RulerTask(frequent_words, "string_match_all"),
}


def check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """`tasks` as a tuple; raises ValueError naming unknown tasks and the valid ones."""
    if isinstance(tasks, str):
        raise ValueError(f"ruler tasks must be a sequence of task names, got the string {tasks!r}; "
                         f"valid: {tuple(TASKS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown ruler task(s) {unknown}; valid: {tuple(TASKS)}")
    return tuple(tasks)


def task_rng(seed: int, task: str, length: int, trial: int) -> np.random.Generator:
    """The generator of one trial, a function of (seed, task, length, trial) only."""
    return np.random.default_rng([seed, zlib.crc32(task.encode()), length, trial])


def ruler_example(tokenizer: Tokenizer, task: str, length: int, *, seed: int = 0, trial: int = 0
                  ) -> RulerExample:
    """The seeded prompt of one trial of `task` at `length` tokens (prompt + generation).

    Raises:
      ValueError: unknown task, or a length too short for it (naming the minimum).
    """
    check_tasks([task])
    if not isinstance(length, int | np.integer) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    return TASKS[task].build(tokenizer, int(length), task_rng(seed, task, int(length), trial))


def check_cells(tokenizer: Tokenizer, tasks: Sequence[str], lengths: Sequence[int], *, seed: int = 0
                ) -> None:
    """Builds trial 0 of every (task, length) cell: raises the ValueError of an unknown task or a
    length too short for its task before any model work (a suite calls it first)."""
    for task in check_tasks(tasks):
        for n in lengths:
            ruler_example(tokenizer, task, n, seed=seed, trial=0)


def score_output(task: str, output: str, references: Sequence[str]) -> float:
    """The task's RULER metric of one decoded output."""
    return METRICS[TASKS[check_tasks([task])[0]].metric](output, references)


def ruler_sweep(model, tokenizer: Tokenizer, store: ResultStore, *, method: str, tasks: Sequence[str],
                lengths: Sequence[int], trials: int, seed: int = 0, progress: bool = True) -> list[dict]:
    """RULER score per (task, length) cell into `store["ruler"]`.

    Every task name, trial count and (task, length) prompt is checked before any model call,
    so a typo or a too-short length fails fast.

    Args:
      model: a `Decoder` (KV-cache prefill + greedy steps) or any causal logits callable.
      tokenizer: `encode`/`decode` tokenizer (its `eos_id` ends a generation).
      store: results file; a cell recorded for `method` with the same prompts is skipped.
      method: label of the extension method.
      tasks: names from `TASKS`.
      lengths: prompt + generation lengths in tokens.
      trials: seeded prompts per cell (>= 1).
      seed: base seed.

    Returns:
      The new records: {"method", "task", "length", "seed", "trials", "metric", "score",
      "scores", "data_key", "misses"}; `misses` holds each trial scoring below 1 with its
      references and decoded output.
    """
    tasks = check_tasks(tasks)
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got {trials!r}")
    cells = {(t, n): [ruler_example(tokenizer, t, n, seed=seed, trial=i) for i in range(trials)]
             for t in tasks for n in sorted(lengths)}
    scorer = ContinuationScorer(model)
    eos = getattr(tokenizer, "eos_id", None)
    new = []
    bar = tqdm(total=len(cells) * trials, desc=f"ruler {method}", disable=not progress)
    for (task, n), examples in cells.items():
        metric = METRICS[TASKS[task].metric]
        data_key = fingerprint([[e.prompt, list(e.references), e.max_new_tokens] for e in examples])
        if store.has("ruler", method=method, task=task, length=n, data_key=data_key):
            bar.update(trials)
            continue
        scores, misses = [], []
        for i, e in enumerate(examples):
            def done(ids: list[int], e=e) -> bool:
                return ids[-1] == eos or metric(tokenizer.decode(ids), e.references) == 1.0

            out = scorer.score(e.prompt, [], new_tokens=e.max_new_tokens, capacity=bucket_length(n),
                               stop=done)
            ids = out.generated.tolist()
            text = tokenizer.decode(ids[: ids.index(eos)] if eos in ids else ids)
            scores.append(float(metric(text, e.references)))
            if scores[-1] < 1.0:
                misses.append({"trial": i, "references": list(e.references), "generated": text})
            bar.update(1)
        record = {"method": method, "task": task, "length": n, "seed": seed, "trials": trials,
                  "metric": TASKS[task].metric, "score": float(np.mean(scores)), "scores": scores,
                  "data_key": data_key, "misses": misses}
        store.put("ruler", record, cell=("method", "task", "length"))
        new.append(record)
        bar.set_postfix(task=task, length=n, score=record["score"])
    bar.close()
    return new
