"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"; used by PI and YaRN).

The prompt, assembled from separately encoded pieces so the needle lands at an exact token
offset:

    <instruction> <filler> x k_before <needle> <filler> x (k - k_before) <question> <answer>

with the instruction "There is an important info hidden inside a lot of irrelevant text. ...",
the filler "The grass is green. The sky is blue. ...", the needle "The pass key is NNNNN.
Remember it. NNNNN is the pass key." and the question "What is the pass key? The pass key is".
k is the largest number of filler repeats that keeps the inputs within the requested length and
k_before = round(depth * k), so the needle's offset in the haystack is within half a filler
sentence of `depth` of the haystack. NNNNN is a seeded random 5-digit number. Scored strictly
by greedy exact match of " NNNNN" (teacher-forced argmax) and leniently by the first integer of
the greedy continuation, both from one prefill (see `longctx_jax.eval.retrieval`).
"""

import numpy as np

from longctx_jax.data.tokenizers import Tokenizer, prompt_prefix
from longctx_jax.eval.results import ResultStore
from longctx_jax.eval.retrieval import RetrievalExample, retrieval_sweep

INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


def passkey_example(tokenizer: Tokenizer, length: int, depth: float, rng: np.random.Generator,
                    trial: int = 0) -> RetrievalExample:
    """One passkey prompt whose inputs (prompt + answer minus the last token) fit `length`.

    Args:
      tokenizer: `encode`/`decode` tokenizer.
      length: the input length in tokens.
      depth: fraction of the filler placed before the needle, in [0, 1].
      rng: source of the 5-digit key.
      trial: unused (the rng already carries it); part of the builder signature.
    """
    del trial
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    key = str(int(rng.integers(10_000, 100_000)))
    head = prompt_prefix(tokenizer) + tokenizer.encode(INSTRUCTION)  # BOS as in generation
    filler = tokenizer.encode(" " + FILLER)
    needle = tokenizer.encode(" " + NEEDLE.format(key=key))
    question = tokenizer.encode(" " + QUESTION)
    answer = tokenizer.encode(" " + key)
    fixed = len(head) + len(needle) + len(question) + len(answer)
    k = (length + 1 - fixed) // len(filler)
    if k < 1:
        raise ValueError(f"length {length} is too short for a passkey prompt (needs > {fixed + len(filler)})")
    k_before = int(round(depth * k))
    tokens = head + filler * k_before + needle + filler * (k - k_before) + question + answer
    return RetrievalExample(
        tokens=np.asarray(tokens, np.int32),
        answer_start=len(tokens) - len(answer),
        needle_start=len(head) + k_before * len(filler),
        haystack_start=len(head),
        haystack_length=k * len(filler),
        answer=key,
    )


def passkey_sweep(model, tokenizer: Tokenizer, store: ResultStore, *, method: str, lengths: list[int],
                  depths: list[float], trials: int, seed: int = 0, batch_tokens: int = 16384,
                  progress: bool = True) -> list[dict]:
    """Passkey accuracy per (length, depth) into `store["passkey"]`; see `retrieval_sweep`."""
    return retrieval_sweep(model, tokenizer, store, section="passkey", build=passkey_example, method=method,
                           lengths=lengths, depths=depths, trials=trials, seed=seed,
                           batch_tokens=batch_tokens, progress=progress)
