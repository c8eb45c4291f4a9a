"""Retrieval sweeps shared by passkey and needle-in-a-haystack: a (length x depth) grid.

A prompt builder returns a `RetrievalExample` (prompt + answer token ids, where the answer
starts, where the needle sits in the haystack). Each grid cell (method, length, depth) builds
`trials` seeded examples and scores each with ONE prefill of its prompt
(`longctx_jax.eval.continuation`) by two scorers reported side by side:

  strict   greedy exact match of the answer tokens, by teacher-forced argmax (`accuracy`);
  lenient  the papers' score: the first integer of the free greedy continuation (answer
           length + `EXTRA_TOKENS` tokens, decoded) equals the key (`lenient_accuracy`).

The decoded continuation of every trial either scorer missed is kept in the row (`misses`).
A cell at length n builds its prompts for n - EXTRA_TOKENS tokens, so prompt, answer and the
extra greedy tokens all sit at positions < n, and runs at `bucket_length(n)`. Examples are
seeded by (seed, length, depth in percent, trial), so a cell's prompts do not depend on which
other cells ran before it, and a resumed sweep asks exactly the questions a fresh one would.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from longctx_jax.eval.continuation import ContinuationScorer, lenient_match
from longctx_jax.eval.results import ResultStore, fingerprint
from longctx_jax.eval.scoring import bucket_length

# Greedy tokens generated beyond the answer's length for the lenient scorer.
EXTRA_TOKENS = 4


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
    extra_tokens: int = EXTRA_TOKENS,
    batch_tokens: int = 16384,
    progress: bool = True,
) -> list[dict]:
    """Strict and lenient accuracy per (length, depth) cell, each written to `store[section]`.

    Each trial's prompt is built for `length - extra_tokens` tokens, so the prompt and its
    greedy continuation of (answer tokens + `extra_tokens`) tokens fit `length`, and is scored
    by one `ContinuationScorer.score` at capacity `bucket_length(length)`.

    Args:
      model: a `Decoder` (one KV-cache prefill per trial), or an `EvalModel`, NNX module or
        logits callable (full forwards; see `longctx_jax.eval.continuation`).
      tokenizer: `encode`/`decode` tokenizer.
      store: results file; cells already recorded for `method` with the same prompts are
        skipped, a cell recorded with other prompts (trials, seed, tokenizer) is replaced.
      section: results section ("passkey", "niah").
      build: `build(tokenizer, length, depth, rng, trial) -> RetrievalExample`.
      method: label of the extension method.
      lengths: evaluated lengths in tokens (prompt + greedy continuation fit each).
      depths: needle depths as fractions of the haystack, in [0, 1].
      trials: examples per cell (>= 1).
      seed: base seed.
      extra_tokens: greedy tokens generated beyond the answer's length (>= 0).
      batch_tokens: unused by the per-trial prefill; kept so configs that set it still load.

    Returns:
      The new records: {"method", "length", "depth", "seed", "trials", "accuracy" (strict),
      "lenient_accuracy", "hits", "lenient_hits", "new_tokens", "depth_measured", "data_key",
      "misses"}; `misses` holds, for every trial a scorer missed, its trial index, the key,
      both verdicts and the decoded greedy continuation; `data_key` fingerprints the prompts,
      answers and generation length.
    """
    del batch_tokens
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got {trials!r}")
    if not isinstance(extra_tokens, int) or extra_tokens < 0:
        raise ValueError(f"extra_tokens must be an integer >= 0, got {extra_tokens!r}")
    scorer = ContinuationScorer(model)
    cells = [(n, d) for n in sorted(lengths) for d in depths]
    new = []
    bar = tqdm(total=len(cells) * trials, desc=f"{section} {method}", disable=not progress)
    for n, d in cells:
        examples = [build(tokenizer, n - extra_tokens, d, example_rng(seed, n, d, t), t)
                    for t in range(trials)]
        data_key = fingerprint([[e.tokens, e.answer_start] for e in examples] + [extra_tokens])
        if store.has(section, method=method, length=n, depth=d, data_key=data_key):
            bar.update(trials)
            continue
        strict, lenient, misses = [], [], []
        for t, e in enumerate(examples):
            answer = e.tokens[e.answer_start :]
            out = scorer.score(e.tokens[: e.answer_start], answer, new_tokens=len(answer) + extra_tokens,
                               capacity=bucket_length(n))
            text = tokenizer.decode(out.generated)
            strict.append(out.strict)
            lenient.append(lenient_match(text, e.answer))
            if not (strict[-1] and lenient[-1]):
                misses.append({"trial": t, "answer": e.answer, "strict": strict[-1], "lenient": lenient[-1],
                               "generated": text})
            bar.update(1)
        record = {"method": method, "length": n, "depth": d, "seed": seed, "trials": trials,
                  "accuracy": float(np.mean(strict)), "lenient_accuracy": float(np.mean(lenient)),
                  "hits": int(np.sum(strict)), "lenient_hits": int(np.sum(lenient)),
                  "new_tokens": int(len(examples[0].tokens) - examples[0].answer_start + extra_tokens),
                  "depth_measured": float(np.mean([e.depth for e in examples])),
                  "data_key": data_key, "misses": misses}
        store.put(section, record, cell=("method", "length", "depth"))
        new.append(record)
        bar.set_postfix(length=n, depth=d, strict=record["accuracy"], lenient=record["lenient_accuracy"])
    bar.close()
    return new
