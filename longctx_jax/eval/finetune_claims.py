"""Claims about fine-tuning a pretrained model past its training length, judged over seeds.

The driver of `configs/repro_smollm2.py` (PI against YaRN fine-tuning of SmolLM2, Peng et al.
2023 Table 1 direction; each fine-tune against its own scaling untrained) and
`configs/repro_smollm2_progressive.py` (two stages against one). For every seed it fine-tunes
each run of `config.runs` (a fine-tuning config spec, `config.overrides` and
`config.run_overrides[name]` applied, workdir `<config.workdir>/<name>/seed<seed>`; a finished
run is reused, an interrupted one resumes; a run of `config.stages` = {run: source} starts from
its source's same-seed parameters, `train.init_from`). Scored runs (those no stage continues)
must have the same total steps, stages included. It then scores

  "<name>_finetuned"    the fine-tuned model (LoRA merged), one per seed;
  "<name>_no_finetune"  the base under the same position scheme, untrained: one model, the
                        control of every seed (stored under each seed's key so the paired
                        differences line up; `seed_independent` lists these series, and their
                        summaries are computed from one copy)

on the first `max(multiples) * L + 1` tokens of `eval.num_docs` whole held-out documents
(`eval.corpus.long_documents`, the stdlib corpus's validation split at `eval.val_fraction`,
which must be the runs' own `data.val_fraction`): one forward of `max(multiples) * L` tokens
per document; the series at k L are its first k L targets (exact for scalings that do not
depend on the sequence length; a dynamic scaling is refused). L is the base's training length.
Every model's block NLLs are cached in `<workdir>/scores/<run>-<inputs hash>.json`, keyed by
the model's content key and every evaluation input, so an interrupted evaluation resumes.

The result has the fields of `eval/claims.run_claim`'s, so `claims.check_consistent` and
`eval/repro_report.py` read it; the verdicts are `eval/verdicts.py`'s rules from the config.
"""

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from flax import nnx

from longctx_jax import config_cli, cpu
from longctx_jax.atomic import write_atomically
from longctx_jax.data import Tokenizer
from longctx_jax.eval.corpus import long_documents, python_version
from longctx_jax.eval.reproduction import block_series
from longctx_jax.eval.scoring import EvalModel
from longctx_jax.eval.verdicts import evaluate_claims, parse_series, series_needed, summarize_series
from longctx_jax.provenance import provenance

FINETUNED, UNTRAINED = "_finetuned", "_no_finetune"
LENGTH_DEPENDENT = ("dynamic",)  # rope types whose angles depend on the sequence length


class FinetuneRuns(Protocol):
    """Fine-tuning runs by config spec (`longctx_jax.train.runs.FinetunedRuns`)."""

    def config(self, spec: str, seed: int, overrides: Mapping[str, Any], workdir: str
               ) -> ml_collections.ConfigDict: ...

    def train(self, config: ml_collections.ConfigDict) -> dict[str, Any]: ...

    def load(self, config: ml_collections.ConfigDict) -> tuple[nnx.Module, Tokenizer, str]: ...

    def base(self, config: ml_collections.ConfigDict) -> tuple[nnx.Module, Tokenizer, str]: ...


def _check(config: ml_collections.ConfigDict) -> None:
    seeds = list(config.seeds)
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be distinct non-negative ints, got {seeds}")
    multiples = list(config.eval.multiples)
    if not multiples or any(not isinstance(k, int) or k < 1 for k in multiples):
        raise ValueError(f"eval.multiples must be positive ints, got {multiples}")
    for field in ("num_docs", "block"):
        if int(config.eval[field]) < 1:
            raise ValueError(f"eval.{field} must be >= 1, got {config.eval[field]}")
    unknown = sorted(set(config.run_overrides) - set(config.runs))
    if unknown:
        raise ValueError(f"run_overrides names runs {unknown}; the runs are {sorted(config.runs)}")
    stages = dict(config.get("stages", {}))
    for run, source in stages.items():
        if run not in config.runs or source not in config.runs or run == source:
            raise ValueError(f"stages: {run!r} continues {source!r}; both must be distinct runs of "
                             f"{sorted(config.runs)}")
    training_order(list(config.runs), stages)
    models = {f"{n}{s}" for n in scored_runs(config) for s in (FINETUNED, UNTRAINED)}
    for key in series_needed([dict(c) for c in config.claims]):
        run, protocol, k = parse_series(key)
        if run not in models or protocol != "full" or k not in multiples:
            raise ValueError(f"rule series {key!r}: this driver scores runs {sorted(models)} with protocol "
                             f"'full' at multiples {multiples}")


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def _merge(base: Mapping, changes: Mapping) -> dict:
    """`base` with `changes` merged in, nested mappings merged field by field."""
    out = dict(base)
    for key, value in changes.items():
        both = isinstance(out.get(key), Mapping) and isinstance(value, Mapping)
        out[key] = _merge(out[key], value) if both else value
    return out


def _run_configs(config: ml_collections.ConfigDict, runs: FinetuneRuns) -> dict[str, dict[int, Any]]:
    """{name: {seed: its fine-tuning config}}, validated against each other and the evaluation."""
    stages = dict(config.get("stages", {}))
    out: dict[str, dict[int, Any]] = {}
    for name in training_order(list(config.runs), stages):
        overrides = _merge(_plain(config.overrides), _plain(config.run_overrides.get(name, {})))
        out[name] = {}
        for s in config.seeds:
            cfg = runs.config(config.runs[name], s, overrides, os.path.join(config.workdir, name, f"seed{s}"))
            if name in stages:  # a later stage starts from its source's same seed (fresh optimizer)
                cfg.train.init_from = out[stages[name]][s].workdir
            out[name][s] = cfg
    def shared(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
        return {"base.original_length": cfg.base.original_length, "data.source": cfg.data.source,
                "data.seq_len": cfg.data.seq_len}

    first = shared(next(iter(next(iter(out.values())).values())))
    budgets = {}
    for name, by_seed in out.items():
        for seed, cfg in by_seed.items():
            if shared(cfg) != first:
                raise ValueError(f"run {name!r} seed {seed}: {shared(cfg)}, other runs {first}; the runs of "
                                 "a claim must differ only in their position scheme")
            if cfg.data.source != "stdlib" or float(cfg.data.val_fraction) != float(config.eval.val_fraction):
                raise ValueError(f"run {name!r} trains on data.source={cfg.data.source!r} at val_fraction "
                                 f"{cfg.data.val_fraction}; the evaluation holds out the stdlib corpus's "
                                 f"validation split at eval.val_fraction={config.eval.val_fraction}")
            rope = dict(cfg.position.rope_scaling or {})
            if rope.get("rope_type") in LENGTH_DEPENDENT:
                raise ValueError(f"run {name!r}: rope_type {rope['rope_type']!r} depends on the sequence "
                                 "length; this driver reads shorter lengths from one longest forward")
        budgets[name] = int(by_seed[config.seeds[0]].train.steps) + budgets.get(stages.get(name), 0)
    scored = {n: budgets[n] for n in scored_runs(config)}
    if len(set(scored.values())) > 1:
        raise ValueError(f"the scored runs train different numbers of steps (their stages included): "
                         f"{scored}; the runs of a claim must have the same budget")
    return out


def training_order(names: Sequence[str], stages: Mapping[str, str]) -> list[str]:
    """`names` with every run after the run it continues (`stages`: {run: source}).

    Raises:
      ValueError: the stages form a cycle.
    """
    order: list[str] = []
    while len(order) < len(names):
        ready = [n for n in names if n not in order and (n not in stages or stages[n] in order)]
        if not ready:
            raise ValueError(f"stages form a cycle: {dict(stages)}")
        order += ready
    return order


def scored_runs(config: ml_collections.ConfigDict) -> list[str]:
    """The runs whose models are scored: every run that no later stage continues."""
    sources = set(dict(config.get("stages", {})).values())
    return [n for n in config.runs if n not in sources]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def score_model(module: nnx.Module, model_key: str, windows: np.ndarray, doc_ids: Sequence[str],
                multiples: Sequence[int], train_len: int, block: int, cache_path: str) -> dict[int, dict]:
    """{k: {document: block NLLs of targets 1 .. k L}} from one forward per window, cached.

    Args:
      module: the causal decoder.
      model_key: a content key of its weights and position scheme (part of the cache key, with
        every field of the module's `ModelConfig`: attention implementation, pattern, window ...).
      windows: token ids `[W, max(multiples) * L + 1]`.
      doc_ids: each window's document.
      multiples, train_len, block: the lengths k L and the bootstrap block.
      cache_path: the JSON file this model's scores go to, "<label>-<hash>.json" (the hash of the
        model key and documents; a file of another label with that hash and equal inputs is reused).
    """
    model_cfg = getattr(module, "cfg", None)
    inputs = {"model": model_key, "model_config": model_cfg.as_dict() if model_cfg is not None else None,
              "windows": _digest(windows.tolist()), "documents": list(doc_ids),
              "multiples": list(multiples), "train_len": train_len, "block": block}
    # The same model under another run's name (e.g. one untrained base shared by two claims) has
    # the same hash suffix: any file with it and equal inputs is this model's score.
    folder, suffix = os.path.dirname(cache_path), "-" + os.path.basename(cache_path).rsplit("-", 1)[-1]
    candidates = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    for path in [cache_path] + [os.path.join(folder, n) for n in candidates if n.endswith(suffix)]:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
            if stored["inputs"] == inputs:
                return {int(k): v for k, v in stored["series"].items()}
    length = max(multiples) * train_len
    if windows.shape[1] != length + 1:
        raise ValueError(f"windows of {windows.shape[1]} tokens; {length + 1} needed")
    model, start = EvalModel(module), time.perf_counter()
    nll = np.concatenate([model.token_nll(windows[i : i + 1, :-1], windows[i : i + 1, 1:])
                          for i in range(windows.shape[0])])
    series = {k: block_series(nll[:, : k * train_len], doc_ids, block) for k in multiples}
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    write_atomically(cache_path, json.dumps({"inputs": inputs, "seconds": time.perf_counter() - start,
                                             "series": {str(k): v for k, v in series.items()}}) + "\n")
    return series


def _summary(run: Mapping) -> dict:
    return {k: v for k, v in run.items() if isinstance(v, int | float | str)}


def run_claim(config: ml_collections.ConfigDict, runs: FinetuneRuns, *, name: str, size: str,
              spec: str) -> dict:
    """Fine-tunes, scores and judges the claims of `config` (`configs/repro_smollm2.py`).

    Args:
      config: the claim config.
      runs: trains and loads the fine-tunes.
      name, size, spec: the driver's name, the config variant and its spec (stored in the result).

    Returns:
      {"driver", "size", "config", "seeds", "train_len", "block", "provenance", "machine", "eval",
      "runs", "series", "summaries", "seed_independent", "claims", "timing_s"} (see the module
      docstring).
    """
    _check(config)
    run_cfgs = _run_configs(config, runs)
    seeds, multiples, block = list(config.seeds), list(config.eval.multiples), int(config.eval.block)
    claims = [dict(c) for c in config.claims]
    timing: dict[str, float] = {}
    result: dict[str, Any] = {"driver": name, "size": size, "config": spec, "seeds": seeds, "block": block,
                              "provenance": provenance(),
                              "machine": {"cpu": cpu.cpu_info().as_dict(), "backend": jax.default_backend(),
                                          "device": str(jax.devices()[0].device_kind),
                                          "jax": jax.__version__},
                              "runs": {}, "series": {}}
    for seed in seeds:
        for run, by_seed in run_cfgs.items():
            start = time.perf_counter()
            summary = runs.train(by_seed[seed])
            timing[f"train {run} seed{seed}"] = time.perf_counter() - start
            result["runs"].setdefault(f"{run}{FINETUNED}", {})[str(seed)] = _summary(summary)
    train_len = int(next(iter(run_cfgs.values()))[seeds[0]].base.original_length)
    scores = os.path.join(config.workdir, "scores")
    windows = doc_ids = None
    for run in scored_runs(config):
        by_seed = run_cfgs[run]
        start = time.perf_counter()
        module, tokenizer, key = runs.base(by_seed[seeds[0]])
        if windows is None:
            docs = long_documents(tokenizer, max(multiples) * train_len + 1, int(config.eval.num_docs),
                                  split="validation", val_fraction=float(config.eval.val_fraction))
            windows = np.stack([d.ids[: max(multiples) * train_len + 1] for d in docs]).astype(np.int32)
            doc_ids = [d.name for d in docs]
        series = score_model(module, key, windows, doc_ids, multiples, train_len, block,
                             os.path.join(scores, f"{run}{UNTRAINED}-{_digest([key, doc_ids])[:16]}.json"))
        for k in multiples:
            result["series"][f"{run}{UNTRAINED}/full@{k}L"] = {str(s): series[k] for s in seeds}
        timing[f"score {run}{UNTRAINED}"] = time.perf_counter() - start
        for seed in seeds:
            start = time.perf_counter()
            module, _, key = runs.load(by_seed[seed])
            series = score_model(module, key, windows, doc_ids, multiples, train_len, block,
                                 os.path.join(scores, f"{run}{FINETUNED}-seed{seed}-"
                                              f"{_digest([key, doc_ids])[:16]}.json"))
            for k in multiples:
                result["series"].setdefault(f"{run}{FINETUNED}/full@{k}L", {})[str(seed)] = series[k]
            timing[f"score {run}{FINETUNED} seed{seed}"] = time.perf_counter() - start
    untrained = sorted(k for k in result["series"] if k.split("/")[0].endswith(UNTRAINED))
    result["train_len"] = train_len
    result["eval"] = {"windows": int(windows.shape[0]), "documents": len(set(doc_ids)),
                      "window_tokens": int(windows.shape[1]), "split": "validation",
                      "val_fraction": float(config.eval.val_fraction), "document_names": doc_ids,
                      "corpus": f"python-{python_version()}-stdlib",
                      "target_tokens": {k: int(sum(len(b) for b in s[str(seeds[0])].values()) * block)
                                        for k, s in result["series"].items()}}
    result["seed_independent"] = untrained
    result["summaries"] = {k: summarize_series({str(seeds[0]): s[str(seeds[0])]} if k in untrained else s)
                           for k, s in result["series"].items()}
    result["claims"] = evaluate_claims(claims, result["series"])
    result["timing_s"] = timing
    return result


# driver name -> its claim config file
DRIVERS = {"smollm2_finetune": "repro_smollm2", "smollm2_progressive": "repro_smollm2_progressive"}
SIZES = {"claim": "cpu", "gpu": "gpu", "smoke": "smoke"}  # reproduce --size -> the config variant


def config_spec(name: str, size: str = "claim") -> str:
    """The spec of driver `name`'s claim config at `size` ("repro_smollm2:cpu")."""
    if name not in DRIVERS:
        raise ValueError(f"unknown fine-tuning claim {name!r}; valid: {tuple(DRIVERS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} for {name!r}; valid: {tuple(SIZES)}")
    return f"{DRIVERS[name]}:{SIZES[size]}"


def run_driver(name: str, size: str, runs: FinetuneRuns, config_dir: str = "configs") -> dict:
    """`run_claim` of driver `name` at `size` with its config read from `config_dir`."""
    spec = config_spec(name, size)
    file, _, variant = spec.partition(":")
    config = config_cli.load_config(f"{os.path.join(config_dir, file)}.py:{variant}")
    return run_claim(config, runs, name=name, size=size, spec=spec)
