"""Retrieval sweeps shared by passkey and needle-in-a-haystack: a (length x depth) grid.

A prompt builder returns a `RetrievalExample` (prompt + answer token ids, where the answer
starts, where the needle sits in the haystack). Each grid cell (method, length, depth) builds
`trials` seeded examples, scores them by greedy exact match (teacher-forced argmax; see
`longctx_jax.eval.scoring`) at one fixed padded length, and records the accuracy. Examples are
seeded by (seed, length, depth in percent, trial), so a cell's prompts do not depend on which
other cells ran before it, and a resumed sweep asks exactly the questions a fresh one would.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from longctx_jax.eval.results import ResultStore, fingerprint
from longctx_jax.eval.scoring import answers_match, as_eval_model, bucket_length


@dataclasses.dataclass(frozen=True)
class RetrievalExample:
    """One retrieval prompt.

    Attributes:
      tokens: int32 `[S]`, prompt followed by the answer; S - 1 <= the requested length.
      answer_start: index of the first answer token in `tokens`.
      needle_start: index of the first needle token in `tokens`.
      haystack_start: index of the first haystack (filler) token.
      haystack_length: haystack tokens, needle excluded.
      answer: the answer text (the pass key / magic number).
    """

    tokens: np.ndarray
    answer_start: int
    needle_start: int
    haystack_start: int
    haystack_length: int
    answer: str

    @property
    def depth(self) -> float:
        """Fraction of the haystack that precedes the needle."""
        return (self.needle_start - self.haystack_start) / self.haystack_length


ExampleBuilder = Callable[[object, int, float, np.random.Generator, int], RetrievalExample]


def example_rng(seed: int, length: int, depth: float, trial: int) -> np.random.Generator:
    """The generator of one example, a function of its cell and trial only."""
    return np.random.default_rng([seed, length, int(round(depth * 100)), trial])


def retrieval_sweep(
    model,
    tokenizer,
    store: ResultStore,
    *,
    section: str,
    build: ExampleBuilder,
    method: str,
    lengths: list[int],
    depths: list[float],
    trials: int,
    seed: int = 0,
    batch_tokens: int = 16384,
    progress: bool = True,
) -> list[dict]:
    """Accuracy per (length, depth) cell, each written to `store[section]` when done.

    Args:
      model: `EvalModel`, NNX module or logits callable.
      tokenizer: `encode`/`decode` tokenizer.
      store: results file; cells already recorded for `method` with the same prompts are
        skipped, a cell recorded with other prompts (trials, seed, tokenizer) is replaced.
      section: results section ("passkey", "niah").
      build: `build(tokenizer, length, depth, rng, trial) -> RetrievalExample`.
      method: label of the extension method.
      lengths: prompt lengths in tokens (the inputs are padded to exactly this length).
      depths: needle depths as fractions of the haystack, in [0, 1].
      trials: examples per cell.
      seed: base seed.
      batch_tokens: examples per forward = max(1, min(trials, batch_tokens // length)).

    Returns:
      The new records: {"method", "length", "depth", "accuracy", "trials", "depth_measured",
      "data_key"}, `data_key` being the fingerprint of the cell's prompt and answer tokens.
    """
    em = as_eval_model(model)
    cells = [(n, d) for n in sorted(lengths) for d in depths]
    new = []
    bar = tqdm(total=len(cells) * trials, desc=f"{section} {method}", disable=not progress)
    for n, d in cells:
        examples = [build(tokenizer, n, d, example_rng(seed, n, d, t), t) for t in range(trials)]
        data_key = fingerprint([[e.tokens, e.answer_start] for e in examples])
        if store.has(section, method=method, length=n, depth=d, data_key=data_key):
            bar.update(trials)
            continue
        hits = answers_match(
            em, [e.tokens for e in examples], [e.answer_start for e in examples],
            length=bucket_length(n), batch_size=max(1, min(trials, batch_tokens // n)),
            pad_id=tokenizer.pad_id,
        )
        record = {"method": method, "length": n, "depth": d, "accuracy": float(hits.mean()),
                  "trials": trials, "depth_measured": float(np.mean([e.depth for e in examples])),
                  "data_key": data_key}
        store.put(section, record, cell=("method", "length", "depth"))
        new.append(record)
        bar.update(trials)
        bar.set_postfix(length=n, depth=d, acc=record["accuracy"])
    bar.close()
    return new
