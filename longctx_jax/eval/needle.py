"""Needle in a haystack (Kamradt 2023) on real text: a magic number hidden in stdlib sources.

    <intro> <haystack[:h]> <needle> <haystack[h:]> <question> <answer>

The haystack is H consecutive tokens of the stdlib corpus (`longctx_jax.eval.corpus`), trial
t starting at token t * length, with H chosen so the inputs fill the requested length exactly;
the needle "The special magic number is NNNNNNN." (a seeded 7-digit number, on its own line)
is inserted at token h = round(depth * H), so its offset is within half a token of `depth` of
the haystack. Depths 0%, 10%, ..., 100% by default; each (length, depth) cell is scored by
greedy exact match of " NNNNNNN" (strict, teacher-forced argmax) and by the first integer of
the greedy continuation (lenient), both from one prefill (see `longctx_jax.eval.retrieval`).
"""

import numpy as np

from longctx_jax.data.tokenizers import Tokenizer, prompt_prefix
from longctx_jax.eval.corpus import token_stream
from longctx_jax.eval.results import ResultStore
from longctx_jax.eval.retrieval import RetrievalExample, retrieval_sweep

INTRO = ("Below is a long piece of Python source code. A special magic number is hidden somewhere "
         "inside it. Find it and memorize it.\n\n")
NEEDLE = "\nThe special magic number is {number}.\n"
QUESTION = "\n\nWhat is the special magic number hidden in the text above? The special magic number is"
DEPTHS = tuple(d / 10 for d in range(11))


def needle_example(tokenizer: Tokenizer, length: int, depth: float, rng: np.random.Generator,
                   trial: int = 0) -> RetrievalExample:
    """One needle-in-a-haystack prompt whose inputs are exactly `length` tokens.

    Args:
      tokenizer: `encode`/`decode` tokenizer.
      length: the input length in tokens.
      depth: fraction of the haystack placed before the needle, in [0, 1].
      rng: source of the 7-digit magic number.
      trial: selects the haystack (tokens trial * length onwards of the corpus).
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    number = str(int(rng.integers(1_000_000, 10_000_000)))
    head = prompt_prefix(tokenizer) + tokenizer.encode(INTRO)  # BOS as in generation
    needle = tokenizer.encode(NEEDLE.format(number=number))
    question = tokenizer.encode(QUESTION)
    answer = tokenizer.encode(" " + number)
    H = length + 1 - len(head) - len(needle) - len(question) - len(answer)
    if H < 1:
        raise ValueError(f"length {length} is too short for a needle prompt")
    haystack = token_stream(tokenizer, trial * length + H)[trial * length :].tolist()
    h = int(round(depth * H))
    tokens = head + haystack[:h] + needle + haystack[h:] + question + answer
    return RetrievalExample(
        tokens=np.asarray(tokens, np.int32),
        answer_start=len(tokens) - len(answer),
        needle_start=len(head) + h,
        haystack_start=len(head),
        haystack_length=H,
        answer=number,
    )


def needle_sweep(model, tokenizer: Tokenizer, store: ResultStore, *, method: str, lengths: list[int],
                 depths: list[float] = DEPTHS, trials: int = 1, seed: int = 0, batch_tokens: int = 16384,
                 progress: bool = True) -> list[dict]:
    """Needle accuracy per (length, depth) into `store["niah"]`; see `retrieval_sweep`."""
    return retrieval_sweep(model, tokenizer, store, section="niah", build=needle_example, method=method,
                           lengths=lengths, depths=list(depths), trials=trials, seed=seed,
                           batch_tokens=batch_tokens, progress=progress)
