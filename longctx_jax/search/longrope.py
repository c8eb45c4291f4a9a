"""LongRoPE's evolutionary search for per-band RoPE rescale factors (Ding et al. 2024, arXiv:2402.13753).

LongRoPE extends a model pretrained at length L to L' = s * L by dividing each RoPE band by its
own factor and keeping the first n_hat positions unrotated-by-the-scaling (sec. 3.2, eq. 3):

    angle_i(p) = p * base^(-2i / d)            for p <  n_hat
    angle_i(p) = p * base^(-2i / d) / lambda_i  for p >= n_hat

and finds (lambda, n_hat) by an evolutionary search (Algorithm 1) whose fitness is the
perplexity at length L' on held-out long documents. Constraints, as in the paper:
  * 1 <= lambda_i <= max_factor (the paper's space is [1.0, 1.25 s]; default 1.25 s here);
  * lambda non-decreasing from high to low frequency: lambda_i <= lambda_{i+1}, i = 0 the
    fastest band (low bands need at least as much interpolation as high ones);
  * n_hat from a fixed menu (default {0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256}).
Initial population: the Position Interpolation, NTK and YaRN factors (each written as a
lambda vector) plus their mutations. Each generation keeps the best `num_parents`, and fills
the rest with mutations (each factor multiplied by exp(N(0, sigma)) with probability p) and
uniform crossovers of two parents, re-projected onto the constraints and deduplicated.

The whole population is scored in one compiled computation: `population_nll` maps
`forward_with_frequencies` over the stacked `[P, d/2]` inverse frequencies with
`jax.lax.map(..., batch_size=chunk)` (a vmap over `chunk` candidates at a time), so the model
is never rebuilt per candidate. `forward_with_frequencies` runs the `Decoder`'s own block
stack (`Decoder.hidden`) with a `rotary` that uses the externally supplied frequencies.

The winner is written as a Hugging Face `longrope` rope_scaling dict (long_factor = lambda,
short_factor = ones, factor = s, original_max_position_embeddings = L), which `load_gguf`,
`load_hf` and `ModelConfig(rope_scaling=...)` accept; n_hat is reported beside it (HF's
longrope has no n_hat field; `apply_rope(num_unscaled=...)` applies it).

Config: configs/longrope_search_smollm2.py (SmolLM2-135M, factor 2 -> 16K; `:cpu` preset).
"""

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longctx_jax.losses import token_nll
from longctx_jax.models.decoder import Decoder
from longctx_jax.positional import rope_scaling as scaling
from longctx_jax.positional.rope import apply_rope
from longctx_jax.typing import Array

DEFAULT_N_HAT = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What LongRoPE searches over for one model and one extension factor.

    Attributes:
      rotary_dim: d, the rotary dimension (lambda has d / 2 entries).
      base: the RoPE base theta of the model.
      original_length: L, the pretrained context length.
      factor: s, the extension factor (target length s * L).
      max_factor: upper bound of every lambda_i (default 1.25 s, the paper's range).
      n_hat_choices: the menu of unscaled leading positions.
    """

    rotary_dim: int
    base: float
    original_length: int
    factor: float
    max_factor: float | None = None
    n_hat_choices: tuple[int, ...] = DEFAULT_N_HAT

    def __post_init__(self):
        if self.factor < 1.0:
            raise ValueError(f"extension factor must be >= 1, got {self.factor}")
        if self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise ValueError(f"rotary_dim must be a positive even integer, got {self.rotary_dim}")
        if self.max_factor is None:
            object.__setattr__(self, "max_factor", 1.25 * self.factor)
        if self.max_factor < 1.0:
            raise ValueError(f"max_factor must be >= 1, got {self.max_factor}")
        if not self.n_hat_choices or min(self.n_hat_choices) < 0:
            raise ValueError(f"n_hat_choices must be non-negative integers, got {self.n_hat_choices}")

    @property
    def num_bands(self) -> int:
        return self.rotary_dim // 2

    @property
    def target_length(self) -> int:
        return int(round(self.factor * self.original_length))

    def base_inv_freq(self) -> np.ndarray:
        return scaling.default_inv_freq(self.rotary_dim, self.base)

    def attention_factor(self) -> float:
        """sqrt(1 + ln s / ln L), the factor `rope_frequencies` applies to a saved longrope dict."""
        return scaling.longrope_attention_factor(self.factor, self.original_length)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One point of the search: per-band factors lambda `[d / 2]` and n_hat."""

    factors: tuple[float, ...]
    n_hat: int

    def key(self) -> tuple:
        return (tuple(round(f, 4) for f in self.factors), self.n_hat)


def constrain(factors: Sequence[float], space: SearchSpace) -> np.ndarray:
    """Projects factors onto the constraints: clip to [1, max_factor], then make non-decreasing."""
    arr = np.clip(np.asarray(factors, np.float64), 1.0, space.max_factor)
    return np.round(np.maximum.accumulate(arr), 4)


def _candidate(factors: Sequence[float], n_hat: int, space: SearchSpace) -> Candidate:
    return Candidate(tuple(float(f) for f in constrain(factors, space)), int(n_hat))


def reference_candidates(space: SearchSpace) -> dict[str, Candidate]:
    """PI, NTK and YaRN written as LongRoPE factor vectors lambda_i = b_i / b'_i (n_hat = 0)."""
    base = space.base_inv_freq()
    d, s, L = space.rotary_dim, space.factor, space.original_length
    ratios = {
        "pi": base / scaling.linear_inv_freq(d, space.base, factor=s),
        "ntk": base / scaling.ntk_inv_freq(d, space.base, factor=s),
        "yarn": base / scaling.yarn_inv_freq(d, space.base, factor=s, original_max_position_embeddings=L),
    }
    return {name: _candidate(r, 0, space) for name, r in ratios.items()}


def mutate(
    parent: Candidate, space: SearchSpace, rng: np.random.Generator, *, prob: float = 0.3, sigma: float = 0.1
) -> Candidate:
    """Multiplies each factor by exp(N(0, sigma)) with probability `prob`; maybe redraws n_hat."""
    factors = np.asarray(parent.factors)
    hit = rng.random(factors.shape) < prob
    factors = np.where(hit, factors * np.exp(rng.normal(0.0, sigma, factors.shape)), factors)
    n_hat = int(rng.choice(space.n_hat_choices)) if rng.random() < prob else parent.n_hat
    return _candidate(factors, n_hat, space)


def crossover(a: Candidate, b: Candidate, space: SearchSpace, rng: np.random.Generator) -> Candidate:
    """Uniform crossover: each factor (and n_hat) from either parent, then re-constrained."""
    pick = rng.random(len(a.factors)) < 0.5
    factors = np.where(pick, np.asarray(a.factors), np.asarray(b.factors))
    return _candidate(factors, a.n_hat if rng.random() < 0.5 else b.n_hat, space)


def initial_population(space: SearchSpace, size: int, rng: np.random.Generator) -> list[Candidate]:
    """The reference candidates, then mutations of them (stronger sigma) up to `size`."""
    refs = list(reference_candidates(space).values())
    population, seen = [], set()
    for c in refs:
        if c.key() not in seen:
            population.append(c)
            seen.add(c.key())
    attempts = 0
    while len(population) < size and attempts < 100 * size:
        attempts += 1
        child = mutate(refs[attempts % len(refs)], space, rng, prob=0.5, sigma=0.2)
        if child.key() not in seen:
            population.append(child)
            seen.add(child.key())
    return population[:size]


def next_generation(
    scored: Sequence[tuple[Candidate, float]],
    space: SearchSpace,
    size: int,
    rng: np.random.Generator,
    *,
    num_parents: int,
    seen: set,
    mutation_prob: float = 0.3,
    sigma: float = 0.1,
) -> list[Candidate]:
    """Elitist step of Algorithm 1: the best `num_parents` survive; children fill the rest.

    Half the children are mutations of a random parent, half crossovers of two (then mutated
    lightly); candidates already evaluated (`seen` keys) are not produced again.
    """
    ranked = sorted(scored, key=lambda cs: cs[1])
    parents = [c for c, _ in ranked[:num_parents]]
    population = list(parents)
    attempts = 0
    while len(population) < size and attempts < 100 * size:
        attempts += 1
        if len(parents) > 1 and rng.random() < 0.5:
            i, j = rng.choice(len(parents), 2, replace=False)
            child = mutate(
                crossover(parents[i], parents[j], space, rng), space, rng, prob=mutation_prob / 2, sigma=sigma
            )
        else:
            child = mutate(parents[rng.integers(len(parents))], space, rng, prob=mutation_prob, sigma=sigma)
        if child.key() not in seen and all(child.key() != c.key() for c in population):
            population.append(child)
    return population


# ----------------------------------------------------------------------------- model forward


def forward_with_frequencies(
    model: Decoder,
    tokens_BT: Array,
    inv_freq_R: Array,
    *,
    attention_factor: float | Array = 1.0,
    unscaled_inv_freq_R: Array | None = None,
    n_hat: int | Array = 0,
    num_layers: int | None = None,
) -> Array:
    """The decoder's logits `[B, T, V]` with RoPE frequencies given from outside.

    Same computation as `Decoder.__call__` (default positions 0 .. T-1, no packing; it runs
    `Decoder.hidden`), but every layer rotates queries and keys with `inv_freq_R`
    (`[rotary_dim // 2]`, may be a traced array) and, for p < n_hat, `unscaled_inv_freq_R`.
    `num_layers` runs only the first layers (a smaller CPU-sized model from a pretrained one).
    """
    cfg = model.cfg
    if cfg.position != "rope":
        raise ValueError(f"forward_with_frequencies needs a RoPE model, got position={cfg.position!r}")

    # Positions are the decoder's default (0 .. T-1); only the frequencies differ.
    def rotary(x_BTNH: Array, positions_BT: Array) -> Array:
        return apply_rope(
            x_BTNH,
            positions_BT,
            inv_freq_R,
            attention_factor,
            interleaved=cfg.rope_interleaved,
            unscaled_inv_freq=unscaled_inv_freq_R,
            num_unscaled=n_hat,
        )

    h = model.hidden(model.embed_tokens(tokens_BT), rotary=rotary, num_layers=num_layers)
    return model.logits(h)


def population_nll(
    model: Decoder,
    docs_BT: np.ndarray,
    inv_freq_PR: np.ndarray,
    n_hat_P: np.ndarray,
    *,
    unscaled_inv_freq_R: np.ndarray,
    attention_factor: float,
    chunk: int = 4,
    num_layers: int | None = None,
) -> np.ndarray:
    """Mean next-token NLL `[P]` of every candidate on the documents, in one jitted call.

    Args:
      model: the pretrained decoder.
      docs_BT: held-out documents `[B, T]` (T = the target length).
      inv_freq_PR: candidate inverse frequencies `[P, rotary_dim // 2]`.
      n_hat_P: each candidate's number of unscaled leading positions `[P]`.
      unscaled_inv_freq_R: plain RoPE frequencies used for p < n_hat.
      attention_factor: the factor on cos and sin (LongRoPE: sqrt(1 + ln s / ln L)).
      chunk: candidates evaluated together (vmapped); P / chunk sequential steps.
      num_layers: run only the first layers (CPU-sized presets).
    """
    graphdef, state = nnx.split(model)
    return np.asarray(
        _population_nll(
            graphdef,
            state,
            jnp.asarray(docs_BT, jnp.int32),
            jnp.asarray(inv_freq_PR, jnp.float32),
            jnp.asarray(n_hat_P, jnp.int32),
            jnp.asarray(unscaled_inv_freq_R, jnp.float32),
            jnp.float32(attention_factor),
            chunk,
            num_layers,
        )
    )


@functools.partial(jax.jit, static_argnums=(0, 7, 8))
def _population_nll(
    graphdef, state, docs_BT, inv_freq_PR, n_hat_P, unscaled_R, attention_factor, chunk, num_layers
):
    model = nnx.merge(graphdef, state)

    def one(args):
        inv_freq_R, n_hat = args

        def doc_nll(tokens_T):
            logits = forward_with_frequencies(
                model,
                tokens_T[None, :-1],
                inv_freq_R,
                attention_factor=attention_factor,
                unscaled_inv_freq_R=unscaled_R,
                n_hat=n_hat,
                num_layers=num_layers,
            )
            return jnp.mean(token_nll(logits[0], tokens_T[1:]))

        return jnp.mean(jax.lax.map(doc_nll, docs_BT))

    return jax.lax.map(one, (inv_freq_PR, n_hat_P), batch_size=chunk)


# ----------------------------------------------------------------------------- search state


@dataclasses.dataclass
class SearchState:
    """Everything a resumed search needs: the next generation to score and all scores so far."""

    generation: int
    population: list[Candidate]
    history: list[dict]  # {"generation", "factors", "n_hat", "nll"} of every scored candidate

    def to_json(self) -> dict:
        return {
            "generation": self.generation,
            "population": [{"factors": list(c.factors), "n_hat": c.n_hat} for c in self.population],
            "history": self.history,
        }

    @classmethod
    def from_json(cls, data: dict) -> "SearchState":
        return cls(
            int(data["generation"]),
            [Candidate(tuple(c["factors"]), int(c["n_hat"])) for c in data["population"]],
            list(data["history"]),
        )

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f)
        os.replace(tmp, path)  # atomic: a crash leaves the previous generation's file

    @classmethod
    def load(cls, path: str) -> "SearchState":
        with open(path) as f:
            return cls.from_json(json.load(f))

    def best(self) -> tuple[Candidate, float]:
        if not self.history:
            raise ValueError("no candidate has been scored yet")
        row = min(self.history, key=lambda r: r["nll"])
        return Candidate(tuple(row["factors"]), int(row["n_hat"])), float(row["nll"])


def longrope_scaling(candidate: Candidate, space: SearchSpace) -> dict:
    """The HF `longrope` rope_scaling dict for a candidate (short_factor = ones)."""
    return {
        "rope_type": "longrope",
        "factor": float(space.factor),
        "original_max_position_embeddings": int(space.original_length),
        "long_factor": [float(f) for f in candidate.factors],
        "short_factor": [1.0] * space.num_bands,
    }


def search(
    model: Decoder,
    docs_BT: np.ndarray,
    space: SearchSpace,
    *,
    state_path: str,
    population_size: int,
    num_parents: int,
    generations: int,
    seed: int = 0,
    chunk: int = 4,
    num_layers: int | None = None,
    mutation_prob: float = 0.3,
    sigma: float = 0.1,
    log=print,
) -> SearchState:
    """Runs (or resumes from `state_path`) the evolutionary search; saves after each generation.

    Generation g draws its randomness from `np.random.default_rng([seed, g])`, so a resumed
    search proposes exactly the candidates an uninterrupted one would.
    """
    if os.path.exists(state_path):
        state = SearchState.load(state_path)
        log(f"resuming at generation {state.generation} from {state_path}")
    else:
        state = SearchState(
            0, initial_population(space, population_size, np.random.default_rng([seed, 0])), []
        )
    base = space.base_inv_freq()
    while state.generation < generations:
        g = state.generation
        scores = {Candidate(tuple(r["factors"]), int(r["n_hat"])).key(): r["nll"] for r in state.history}
        fresh = [c for c in state.population if c.key() not in scores]
        if fresh:  # parents kept from the previous generation are not scored again
            # Padded with repeats to whole chunks: one compile per distinct chunk count, and no
            # 16K forward spent re-scoring padding when few candidates are new.
            padded = fresh + [fresh[-1]] * (-len(fresh) % chunk)
            inv_freq = np.stack([base / np.asarray(c.factors) for c in padded])
            n_hat = np.asarray([c.n_hat for c in padded])
            nll = population_nll(
                model,
                docs_BT,
                inv_freq,
                n_hat,
                unscaled_inv_freq_R=base,
                attention_factor=space.attention_factor(),
                chunk=chunk,
                num_layers=num_layers,
            )
            for c, value in zip(fresh, nll[: len(fresh)], strict=True):
                scores[c.key()] = float(value)
                state.history.append(
                    {"generation": g, "factors": list(c.factors), "n_hat": c.n_hat, "nll": float(value)}
                )
        scored = [(c, scores[c.key()]) for c in state.population]
        best, best_nll = state.best()
        log(
            f"generation {g}: best ppl {math.exp(best_nll):.4f} (n_hat {best.n_hat}); "
            f"{len(fresh)} new candidates scored"
        )
        seen = set(scores)
        rng = np.random.default_rng([seed, g + 1])
        state = SearchState(
            g + 1,
            next_generation(
                scored,
                space,
                population_size,
                rng,
                num_parents=num_parents,
                seen=seen,
                mutation_prob=mutation_prob,
                sigma=sigma,
            ),
            state.history,
        )
        state.save(state_path)
    return state
