"""Reproduce a long-context claim end to end: train its runs (reusing finished ones), evaluate
perplexity against length on held-out stdlib documents, write `<out>/<claim>.json`.

  python -m experiments.reproduce --claim=alibi       # configs/repro_alibi.py
  python -m experiments.reproduce --claim=pi          # configs/repro_pi.py (needs the rope run)
  python -m experiments.reproduce --claim=yarn        # configs/repro_yarn.py (needs pi)
  python -m experiments.reproduce --claim=streaming   # configs/repro_streaming.py
  python -m experiments.reproduce --claim=window      # configs/repro_sliding_window.py
  python -m experiments.reproduce --claim=progressive # configs/repro_progressive.py (needs pi)

Protocols: "single forward" runs the first N + 1 tokens of each document once and reports
exp(mean NLL over the N targets) (one forward per length, so length-dependent scalings such as
dynamic NTK see the true length); "strided" is the sliding-window protocol of Press et al.
(`longctx_jax.eval.perplexity.strided_nll`); "stream" decodes token by token through a
StreamingLLM KV cache (`Decoder.decode`). Documents: the longest held-out (validation split)
documents of the stdlib corpus, the same for every model.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx

from configs import (
    repro_alibi,
    repro_pi,
    repro_progressive,
    repro_sliding_window,
    repro_streaming,
    repro_yarn,
)
from longctx_jax.data import ByteTokenizer, default_data_config, tokenized_documents
from longctx_jax.eval.perplexity import strided_nll
from longctx_jax.eval.scoring import EvalModel
from longctx_jax.models.kv_cache import KVCache
from longctx_jax.train.init_from import init_params_from
from longctx_jax.train.trainer import decoder_from_config, train_and_evaluate

CLAIMS = ("alibi", "pi", "yarn", "streaming", "window", "progressive")
_CLAIM = flags.DEFINE_enum("claim", "alibi", CLAIMS, "Which reproduction to run.")
_OUT = flags.DEFINE_string("out", "runs/repro", "Directory for the results JSON.")
_VARIANTS = flags.DEFINE_list("variants", list(repro_alibi.VARIANTS), "alibi claim: which base models.")
_STEPS_SCALE = flags.DEFINE_float("steps_scale", 1.0, "Multiply every run's steps (reduced-size runs).")
VOCAB = ByteTokenizer().vocab_size


def train(config: ml_collections.ConfigDict) -> dict:
    """Trains `config` in its workdir unless a finished run is there; returns its summary.

    A finished run (its summary.json) is reused whatever its step count, which the summary
    records; `--steps_scale` only sizes runs trained now.
    """
    path = os.path.join(config.workdir, "summary.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    config = config.copy_and_resolve_references()
    config.train.steps = max(int(config.train.steps * _STEPS_SCALE.value), config.optim.warmup_steps + 1)
    config.train.eval_every = config.train.checkpoint_every = config.train.steps
    out = train_and_evaluate(config, config.workdir)
    return {k: v for k, v in out.items() if k not in ("state", "graphdef")}


def load(config: ml_collections.ConfigDict, **model_changes) -> nnx.Module:
    """The trained model of `config.workdir`, with `model_changes` applied to its config first."""
    config = config.copy_and_resolve_references()
    for name, value in model_changes.items():
        if name in ("window", "sinks"):
            config.model.attention[name] = value
        else:
            config.model[name] = value
    model = decoder_from_config(config, VOCAB)
    graphdef, params = nnx.split(model)
    params, _ = init_params_from(params, config.workdir)
    return nnx.merge(graphdef, params)


def eval_docs(num_docs: int, num_tokens: int) -> np.ndarray:
    """`[num_docs, num_tokens]` int32: the first tokens of the longest held-out documents."""
    docs = tokenized_documents(default_data_config(), ByteTokenizer(), "validation")
    lengths = np.diff(docs.starts)
    longest = np.argsort(-lengths, kind="stable")[:num_docs]
    if lengths[longest[-1]] < num_tokens:
        have = int((lengths >= num_tokens).sum())
        raise ValueError(f"only {have} held-out documents have {num_tokens} tokens, {num_docs} needed")
    return np.stack([docs.doc(int(d))[:num_tokens] for d in longest])


def ppl_vs_length(module: nnx.Module, docs_NL: np.ndarray, lengths) -> dict[str, float]:
    """Single-forward perplexity at each length N (targets 1 .. N of each document)."""
    model, out = EvalModel(module), {}
    for n in lengths:
        nll = model.token_nll(docs_NL[:, :n], docs_NL[:, 1 : n + 1])
        out[str(n)] = math.exp(float(nll.mean()))
    return out


def strided_ppl(module: nnx.Module, docs_NL: np.ndarray, window: int, stride: int) -> float:
    """Sliding-window (window, stride) perplexity over whole documents."""
    model = EvalModel(module)
    return math.exp(float(np.mean([strided_nll(model, d, window=window, stride=stride) for d in docs_NL])))


def stream_ppl(module: nnx.Module, docs_NL: np.ndarray, cache_size: int, sinks: int) -> dict:
    """Token-by-token decoding through a StreamingLLM cache; perplexity per eighth of the stream."""
    graphdef, state = nnx.split(module)
    cfg = module.cfg

    @jax.jit
    def nll_TB(state, tokens_BT, targets_BT):
        decoder = nnx.merge(graphdef, state)
        cache = KVCache.create(num_layers=cfg.num_layers, batch=tokens_BT.shape[0], capacity=cache_size,
                               num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, streaming=True,
                               sinks=sinks)

        def body(cache, xs):
            tok_B, tgt_B = xs
            logits, cache = decoder.decode(tok_B[:, None], cache)
            logits_BV = logits[:, 0].astype(jnp.float32)
            nll = jax.nn.logsumexp(logits_BV, -1) - jnp.take_along_axis(logits_BV, tgt_B[:, None], -1)[:, 0]
            return cache, nll

        return jax.lax.scan(body, cache, (tokens_BT.T, targets_BT.T))[1]

    nll = np.asarray(nll_TB(state, jnp.asarray(docs_NL[:, :-1]), jnp.asarray(docs_NL[:, 1:])))
    eighths = np.array_split(nll, 8)
    return {"ppl": math.exp(float(nll.mean())), "ppl_by_eighth": [math.exp(float(e.mean())) for e in eighths]}


def ratio(ppl: dict[str, float], lengths) -> float:
    return ppl[str(lengths[-1])] / ppl[str(lengths[0])]


def run_alibi() -> dict:
    lengths = repro_alibi.base_config("rope").eval.lengths
    docs = eval_docs(8, lengths[-1] + 1)
    result = {"runs": {}, "ppl": {}, "strided_ppl": {}}
    for variant in _VARIANTS.value:
        config = repro_alibi.get_config(variant)
        result["runs"][variant] = train(config)
        model = load(config)
        result["ppl"][variant] = ppl_vs_length(model, docs, lengths)
        result["strided_ppl"][variant] = {f"window{lengths[0]}_stride{config.eval.stride}_doc{lengths[-1]}":
                                          strided_ppl(model, docs, lengths[0], config.eval.stride)}
    ratios = {v: ratio(result["ppl"][v], lengths) for v in _VARIANTS.value}
    result["ppl_ratio_8L_over_L"] = ratios
    result["reproduced"] = bool(ratios["alibi"] <= 1.1 and ratios["rope"] >= 2.0)
    return result


def run_pi() -> dict:
    base = repro_alibi.get_config("rope")
    long_len = repro_pi.FACTOR * repro_alibi.TRAIN_LEN
    lengths = (repro_alibi.TRAIN_LEN, 2 * repro_alibi.TRAIN_LEN, long_len)
    docs = eval_docs(8, long_len + 1)
    result = {"runs": {"rope": train(base)}, "ppl": {}}
    result["ppl"]["extrapolation"] = ppl_vs_length(load(base), docs, lengths)
    for variant in repro_pi.VARIANTS:
        config = repro_pi.get_config(variant)
        result["runs"][variant] = train(config)
        result["ppl"][f"{variant}_finetuned"] = ppl_vs_length(load(config), docs, lengths)
    at = {k: v[str(long_len)] for k, v in result["ppl"].items()}
    result["ppl_at_4L"] = at
    result["reproduced"] = bool(at["pi_finetuned"] < min(at["extrapolation"], at["noscale_finetuned"]))
    return result


def run_yarn() -> dict:
    base = repro_alibi.get_config("rope")
    long_len = repro_pi.FACTOR * repro_alibi.TRAIN_LEN
    lengths = (repro_alibi.TRAIN_LEN, 2 * repro_alibi.TRAIN_LEN, long_len)
    docs = eval_docs(8, long_len + 1)
    result = {"runs": {"rope": train(base)}, "ppl": {}}
    for name, config in (("pi", repro_pi.get_config("pi")), ("yarn", repro_yarn.get_config("yarn"))):
        result["runs"][name] = train(config)
        result["ppl"][f"{name}_finetuned"] = ppl_vs_length(load(config), docs, lengths)
    result["ppl"]["none_no_finetune"] = ppl_vs_length(load(base), docs, lengths)
    for rope_type in ("linear", "ntk", "dynamic", "yarn"):
        model = load(base, rope_scaling=repro_yarn.scaling(rope_type))
        result["ppl"][f"{rope_type}_no_finetune"] = ppl_vs_length(model, docs, lengths)
    at = {k: v[str(long_len)] for k, v in result["ppl"].items()}
    result["ppl_at_4L"] = at
    result["reproduced_finetuned"] = bool(at["yarn_finetuned"] <= at["pi_finetuned"])
    result["reproduced_no_finetune"] = bool(at["yarn_no_finetune"] < at["linear_no_finetune"]
                                            and at["dynamic_no_finetune"] < at["linear_no_finetune"])
    return result


def run_streaming() -> dict:
    result = {"runs": {}, "stream": {}}
    for variant in repro_streaming.VARIANTS:
        config = repro_streaming.get_config(variant)
        result["runs"]["rope"] = train(config)
        docs = eval_docs(config.eval.num_docs, config.eval.stream_len + 1)
        model = load(config)
        result["stream"][variant] = stream_ppl(model, docs, config.eval.cache_size, config.eval.sinks)
    result["stream_len"], result["cache_size"] = config.eval.stream_len, config.eval.cache_size
    sinks, nosinks = result["stream"]["sinks"], result["stream"]["nosinks"]
    result["sinks_last_over_second_eighth"] = sinks["ppl_by_eighth"][-1] / sinks["ppl_by_eighth"][1]
    flat = result["sinks_last_over_second_eighth"] <= 1.2
    result["reproduced"] = bool(sinks["ppl"] < nosinks["ppl"] and flat)
    return result


def run_window() -> dict:
    lengths = repro_alibi.base_config("rope").eval.lengths
    docs = eval_docs(8, lengths[-1] + 1)
    dense, windowed = repro_alibi.get_config("rope"), repro_sliding_window.get_config("window")
    window = windowed.model.attention.window
    result = {"runs": {"dense": train(dense), "window": train(windowed)}, "ppl": {}}
    result["ppl"]["dense_trained"] = ppl_vs_length(load(dense), docs, lengths)
    result["ppl"]["window_trained"] = ppl_vs_length(load(windowed), docs, lengths)
    result["ppl"]["dense_trained_window_at_eval"] = ppl_vs_length(load(dense, window=window), docs, lengths)
    ratios = {k: ratio(v, lengths) for k, v in result["ppl"].items()}
    result["ppl_ratio_8L_over_L"] = ratios
    result["reproduced"] = bool(ratios["window_trained"] <= 1.1 and ratios["dense_trained"] >= 2.0)
    return result


def run_progressive() -> dict:
    long_len = repro_pi.FACTOR * repro_alibi.TRAIN_LEN
    lengths = (repro_alibi.TRAIN_LEN, 2 * repro_alibi.TRAIN_LEN, long_len)
    docs = eval_docs(8, long_len + 1)
    result = {"runs": {"rope": train(repro_alibi.get_config("rope"))}, "ppl": {}}
    runs = (("pi", repro_pi.get_config("pi")), ("stage1", repro_progressive.get_config("stage1")),
            ("stage2", repro_progressive.get_config("stage2")))
    for name, config in runs:
        result["runs"][name] = train(config)
        result["ppl"][name] = ppl_vs_length(load(config), docs, lengths)
    at = {k: v[str(long_len)] for k, v in result["ppl"].items()}
    result["ppl_at_4L"] = at
    result["reproduced"] = bool(at["stage2"] <= at["pi"])
    return result


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    claim = _CLAIM.value
    result = {"claim": claim, "steps_scale": _STEPS_SCALE.value, **globals()[f"run_{claim}"]()}
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, f"{claim}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
