"""Training tokens/s and memory of a config's train step, written to `<workdir>/bench_train.json`.

  python -m experiments.bench_train --config configs/bench_train.py

Times `config.bench.steps` jitted train steps after `config.bench.warmup` (compilation
excluded) and records tokens/s, the compiled step's memory analysis and the process's peak RSS.
"""

import json
import os
import resource
import time

import jax
import ml_collections
from flax import nnx
from tqdm import tqdm

from longctx_jax.bench import machine
from longctx_jax.provenance import provenance
from longctx_jax.train.optimizer import make_optimizer
from longctx_jax.train.step import init_train_state, make_train_step
from longctx_jax.train.trainer import decoder_from_config, make_training_data


def run(config: ml_collections.ConfigDict) -> dict:
    """Benchmarks the train step of `config` (a `configs/tiny.py`-style config plus `bench`).

    Args:
      config: a training config with `bench.warmup` (>= 0) and `bench.steps` (> 0) steps.

    Returns:
      The result written to `<config.workdir>/bench_train.json`.
    """
    warmup, steps = int(config.bench.warmup), int(config.bench.steps)
    if warmup < 0 or steps <= 0:
        raise ValueError(f"bench.warmup must be >= 0 and bench.steps > 0, got {warmup}, {steps}")
    data = make_training_data(config.data, seed=int(config.seed))
    graphdef, params = nnx.split(decoder_from_config(config, data.tokenizer.vocab_size))
    tx = make_optimizer(config.optim, int(config.train.steps))
    train_step = make_train_step(graphdef, tx, use_segment_ids=bool(config.data.use_segment_ids))
    state = init_train_state(params, tx)
    batches = [data.train_batch(step) for step in range(warmup + steps)]

    memory = train_step.lower(state, batches[0]).compile().memory_analysis()
    metrics = None
    for batch in batches[:warmup]:
        state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for batch in tqdm(batches[warmup:], desc="bench", unit="step"):
        state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start

    tokens = steps * config.data.batch_size * config.data.seq_len
    result = {
        "device": str(jax.devices()[0].device_kind),
        "machine": machine.machine(), **provenance(),
        "jax_version": jax.__version__,
        "num_params": sum(x.size for x in jax.tree.leaves(params)),
        "batch_size": config.data.batch_size,
        "seq_len": config.data.seq_len,
        "steps_timed": steps,
        "seconds_per_step": seconds / steps,
        "tokens_per_sec": tokens / seconds,
        "compiled_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "compiled_argument_bytes": getattr(memory, "argument_size_in_bytes", None),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    os.makedirs(config.workdir, exist_ok=True)
    with open(os.path.join(config.workdir, "bench_train.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return result
