"""RULER task generators (Hsieh et al. 2024), built locally from seeded pseudo-words and noise.

Each generator is `build(tokenizer, length, rng) -> RulerExample`: a prompt whose token count
plus the task's generation budget is at most `length`, and the reference strings a correct
answer contains. Prompts are assembled from separately encoded pieces (instruction, units of
context, question, answer prefix), so their token counts are exact for any tokenizer, and the
context is the largest number of units that fits (for niah and vt, noise cut to fill the
length exactly). Templates follow RULER's `constants.py`:

  niah_*   "Some special magic numbers are hidden within the following text. Make sure to
           memorize it. I will quiz you about the numbers afterwards." + noise ("The grass is
           green. ...", RULER's repeat haystack) with needles "One of the special magic
           numbers for {key} is: {value}." at seeded random unit boundaries + "What are all
           the special magic numbers for {keys} mentioned in the provided text?" + answer
           prefix. Keys are two pseudo-words ("bakuto-rimeso"), values 7-digit numbers.
           single: 1 key, 1 value; multikey: 4 keys (3 distractors), 1 queried; multivalue:
           1 key with 4 values; multiquery: 4 keys, all 4 queried.
  vt       variable tracking: a chain "VAR X0 = 12345." -> "VAR X1 = VAR X0." ... (4 hops,
           5 variables of 5 capital letters) in noise, in order; references: every variable
           assigned the value.
  cwe      common-words extraction: a numbered list where 10 common words appear freq_cw
           times and the others freq_ucw times (30 / 3 from 4096 tokens, 2 / 1 below, our
           choice so short lengths still hold a list); references: the 10 common words.
  fwe      frequent-words extraction: coded words with Zipf counts floor(C / r^2) for ranks
           r = 1, 2, ... (rank 1 is the noise word "...."), C the largest that fits;
           references: the words of ranks 2, 3, 4 (strictly more frequent than rank 5).

Pseudo-words are three consonant-vowel syllables ("bakuto"): all six letters long, so no word
is a substring of another, which RULER's substring scoring needs.
"""

import dataclasses
import string

import numpy as np

from longctx_jax.data.tokenizers import Tokenizer, prompt_prefix
from longctx_jax.eval.passkey import FILLER as NOISE


@dataclasses.dataclass(frozen=True)
class RulerExample:
    """One RULER prompt.

    Attributes:
      prompt: int32 `[P]`, the prompt ending with the answer prefix; P + max_new_tokens <= length.
      references: the strings a correct answer contains.
      max_new_tokens: the task's generation budget (RULER's tokens_to_generate).
    """

    prompt: np.ndarray
    references: tuple[str, ...]
    max_new_tokens: int


class TooShort(ValueError):
    """The requested length cannot hold the task's fixed text and the smallest context."""


CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"


def pseudo_words(rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct six-letter consonant-vowel words, in random order."""
    space = (len(CONSONANTS) * len(VOWELS)) ** 3
    if count > space:
        raise ValueError(f"asked for {count} distinct pseudo-words, only {space} exist")
    codes = rng.choice(space, size=count, replace=False)
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    n = len(syllables)
    return [syllables[c // (n * n)] + syllables[(c // n) % n] + syllables[c % n] for c in codes]


def _numbers(rng: np.random.Generator, count: int, digits: int) -> list[str]:
    low = 10 ** (digits - 1)
    return [str(low + int(v)) for v in rng.choice(9 * low, size=count, replace=False)]


def _too_short(task: str, length: int, minimum: int) -> TooShort:
    return TooShort(f"length {length} is too short for ruler task {task!r}: it needs at least {minimum} "
                    f"tokens with this tokenizer (valid lengths: >= {minimum})")


def _noise_with_inserts(tokenizer: Tokenizer, task: str, length: int, budget: int, fixed: int,
                        inserts: list[list[int]], rng: np.random.Generator) -> list[int]:
    """Noise units with `inserts` (kept in order) at seeded random unit boundaries, filling
    exactly `budget` tokens minus `fixed` (the rest of the prompt): the last unit is cut to fit,
    so every trial of a (task, length) cell has the same prompt length (one compilation)."""
    unit = tokenizer.encode(" " + NOISE)
    room = budget - fixed - sum(len(x) for x in inserts)
    k = room // len(unit)
    if k < 1:
        raise _too_short(task, length, length - room + len(unit))
    slots = np.sort(rng.integers(0, k + 1, size=len(inserts)))
    out: list[int] = []
    prev = 0
    for slot, piece in zip(slots, inserts, strict=True):
        out += unit * int(slot - prev) + piece
        prev = int(slot)
    return out + unit * (k - prev) + unit[: room - k * len(unit)]


def _head(tokenizer: Tokenizer, head: str) -> list[int]:
    """A prompt's first ids: BOS where the tokenizer adds one (as generation does), then `head`."""
    return prompt_prefix(tokenizer) + tokenizer.encode(head)


def _assemble(head: str, body: list[int], question: str, tokenizer: Tokenizer) -> np.ndarray:
    return np.asarray(_head(tokenizer, head) + body + tokenizer.encode(question), np.int32)


NIAH_HEAD = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the numbers afterwards.\n")
NIAH_NEEDLE = " One of the special magic numbers for {key} is: {value}."
NIAH_QUESTION = ("\nWhat are all the special magic numbers for {query} mentioned in the provided text? "
                 "The special magic numbers for {query} mentioned in the provided text are")


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", and " + names[-1]


def niah(tokenizer: Tokenizer, length: int, rng: np.random.Generator, *, task: str, num_keys: int,
         num_values: int, num_queries: int, max_new_tokens: int = 128) -> RulerExample:
    """A RULER needle-in-a-haystack prompt (see module doc); references: the queried values."""
    words = pseudo_words(rng, 2 * num_keys)
    keys = [f"{words[2 * i]}-{words[2 * i + 1]}" for i in range(num_keys)]
    values = _numbers(rng, num_keys * num_values, 7)
    needles = [(key, values[i * num_values + j]) for i, key in enumerate(keys) for j in range(num_values)]
    order = rng.permutation(len(needles))
    pieces = [tokenizer.encode(NIAH_NEEDLE.format(key=needles[i][0], value=needles[i][1])) for i in order]
    queried = keys[:num_queries]
    question = NIAH_QUESTION.format(query=_join(queried))
    fixed = len(_head(tokenizer, NIAH_HEAD)) + len(tokenizer.encode(question))
    body = _noise_with_inserts(tokenizer, task, length, length - max_new_tokens, fixed, pieces, rng)
    references = tuple(v for k, v in needles if k in queried)
    return RulerExample(_assemble(NIAH_HEAD, body, question, tokenizer), references, max_new_tokens)


VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_QUESTION = ("\nQuestion: Find all variables that are assigned the value {value} in the text above. "
               "Answer: According to the chain(s) of variable assignment in the text above, {count} "
               "variables are assigned the value {value}, they are:")


def variable_tracking(tokenizer: Tokenizer, length: int, rng: np.random.Generator, *, num_chains: int = 1,
                      num_hops: int = 4, max_new_tokens: int = 30) -> RulerExample:
    """RULER variable tracking (see module doc); references: the first chain's variables."""
    letters = np.array(list(string.ascii_uppercase))
    names: list[str] = []
    while len(names) < num_chains * (num_hops + 1):
        name = "".join(rng.choice(letters, size=5))
        if name not in names:
            names.append(name)
    values = _numbers(rng, num_chains, 5)
    chains = [names[c * (num_hops + 1):(c + 1) * (num_hops + 1)] for c in range(num_chains)]
    statements = [[f" VAR {chain[0]} = {value}."] + [f" VAR {chain[i]} = VAR {chain[i - 1]}."
                                                     for i in range(1, len(chain))]
                  for chain, value in zip(chains, values, strict=True)]
    # a random interleaving that keeps each chain's order
    owners = rng.permutation(np.repeat(np.arange(num_chains), num_hops + 1))
    cursor = [0] * num_chains
    ordered = []
    for c in owners:
        ordered.append(tokenizer.encode(statements[c][cursor[c]]))
        cursor[c] += 1
    question = VT_QUESTION.format(value=values[0], count=num_hops + 1)
    fixed = len(_head(tokenizer, VT_HEAD)) + len(tokenizer.encode(question))
    body = _noise_with_inserts(tokenizer, "vt", length, length - max_new_tokens, fixed, ordered, rng)
    return RulerExample(_assemble(VT_HEAD, body, question, tokenizer), tuple(chains[0]), max_new_tokens)


CWE_HEAD = ("Below is a numbered list of words. In these words, some appear more often than others. "
            "Memorize the ones that appear most often.\n")
CWE_QUESTION = ("\nQuestion: What are the {n} most common words in the above list? Answer: The top {n} "
                "words that appear most often in the list are:")


def _largest_fitting(fits, low: int, high: int) -> int:
    """The largest x in [low, high] with fits(x), given fits is monotone decreasing and fits(low)."""
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def common_words(tokenizer: Tokenizer, length: int, rng: np.random.Generator, *, num_cw: int = 10,
                 max_new_tokens: int = 120) -> RulerExample:
    """RULER common-words extraction (see module doc); references: the common words."""
    freq_cw, freq_ucw = (30, 3) if length >= 4096 else (2, 1)
    question = CWE_QUESTION.format(n=num_cw)
    budget = length - max_new_tokens - len(_head(tokenizer, CWE_HEAD)) - len(tokenizer.encode(question))
    # an item costs >= 2 tokens (number, word), which bounds the rare words that can fit
    pool = pseudo_words(rng, num_cw + max(budget, 0) // (2 * freq_ucw) + 1)
    common, rare = pool[:num_cw], pool[num_cw:]
    rare_prefix = np.cumsum([0] + [len(tokenizer.encode(" " + w)) for w in rare])
    common_tokens = freq_cw * sum(len(tokenizer.encode(" " + w)) for w in common)
    numbering = [0]  # numbering[i]: tokens of the labels "\n1." .. "\n{i}.", extended on demand

    def tokens(num_rare: int) -> int:
        items = num_cw * freq_cw + num_rare * freq_ucw
        while len(numbering) <= items:
            numbering.append(numbering[-1] + len(tokenizer.encode(f"\n{len(numbering)}.")))
        return numbering[items] + common_tokens + freq_ucw * int(rare_prefix[num_rare])

    if tokens(0) > budget:
        minimum = length - budget + tokens(0)
        raise _too_short("cwe", length, minimum)
    num_rare = _largest_fitting(lambda r: tokens(r) <= budget, 0, len(rare))
    words = np.array(common * freq_cw + rare[:num_rare] * freq_ucw)[rng.permutation(
        num_cw * freq_cw + num_rare * freq_ucw)]
    body = [t for i, w in enumerate(words)
            for t in tokenizer.encode(f"\n{i + 1}.") + tokenizer.encode(" " + w)]
    return RulerExample(_assemble(CWE_HEAD, body, question, tokenizer), tuple(common), max_new_tokens)


FWE_HEAD = ("Read the following coded text and track the frequency of each coded word. Find the three "
            "most frequently appeared coded words.")
FWE_QUESTION = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the "
                "three most frequently appeared words in the above coded text? Answer: According to the "
                "coded text above, the three most frequently appeared words are:")
FWE_ALPHA = 2.0


def _zipf_counts(scale: int) -> list[int]:
    counts, r = [], 1
    while (c := int(scale / r**FWE_ALPHA)) >= 1:
        counts.append(c)
        r += 1
    return counts


def frequent_words(tokenizer: Tokenizer, length: int, rng: np.random.Generator, *,
                   max_new_tokens: int = 50) -> RulerExample:
    """RULER frequent-words extraction (see module doc); references: ranks 2-4's words."""
    budget = length - max_new_tokens - len(_head(tokenizer, FWE_HEAD)) - len(tokenizer.encode(FWE_QUESTION))
    vocab = ["...."] + pseudo_words(rng, int((length + 1) ** 0.5) + 8)
    word_len = [len(tokenizer.encode(" " + w)) for w in vocab]

    def tokens(scale: int) -> int:
        counts = _zipf_counts(scale)
        return sum(c * word_len[r] for r, c in enumerate(counts)) if len(counts) <= len(vocab) else budget + 1

    # the smallest scale whose rank-4 word is strictly more frequent than rank 5's (32)
    low = next(s for s in range(25, 200) if _zipf_counts(s)[3] > _zipf_counts(s)[4])
    if tokens(low) > budget:
        raise _too_short("fwe", length, length - budget + tokens(low))
    scale = _largest_fitting(lambda s: tokens(s) <= budget, low, max(low, budget))
    counts = _zipf_counts(scale)
    words = np.array([vocab[r] for r, c in enumerate(counts) for _ in range(c)])[rng.permutation(sum(counts))]
    body = [t for w in words for t in tokenizer.encode(" " + w)]
    return RulerExample(_assemble(FWE_HEAD, body, FWE_QUESTION, tokenizer), tuple(vocab[1:4]), max_new_tokens)
