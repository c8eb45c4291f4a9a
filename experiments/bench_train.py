"""Training tokens/s and memory of a config's train step, written to `<workdir>/bench_train.json`.

  python -m experiments.bench_train --config configs/bench_train.py
"""

import json
import os
import platform
import resource
import time

import jax
from flax import nnx
from tqdm import tqdm

from longctx_jax import config_cli
from longctx_jax.train.optimizer import make_optimizer
from longctx_jax.train.step import init_train_state, make_train_step
from longctx_jax.train.trainer import decoder_from_config, make_training_data

_CONFIG = config_cli.define_config("configs/bench_train.py")


def main(config) -> None:
    data = make_training_data(config.data, seed=int(config.seed))
    graphdef, params = nnx.split(decoder_from_config(config, data.tokenizer.vocab_size))
    tx = make_optimizer(config.optim, int(config.train.steps))
    train_step = make_train_step(graphdef, tx, use_segment_ids=bool(config.data.use_segment_ids))
    state = init_train_state(params, tx)
    batches = [data.train_batch(step) for step in range(config.bench.warmup + config.bench.steps)]

    memory = train_step.lower(state, batches[0]).compile().memory_analysis()
    for batch in batches[: config.bench.warmup]:
        state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for batch in tqdm(batches[config.bench.warmup:], desc="bench", unit="step"):
        state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start

    tokens = config.bench.steps * config.data.batch_size * config.data.seq_len
    result = {
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "num_params": sum(x.size for x in jax.tree.leaves(params)),
        "batch_size": config.data.batch_size,
        "seq_len": config.data.seq_len,
        "steps_timed": config.bench.steps,
        "seconds_per_step": seconds / config.bench.steps,
        "tokens_per_sec": tokens / seconds,
        "compiled_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "compiled_argument_bytes": getattr(memory, "argument_size_in_bytes", None),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    os.makedirs(config.workdir, exist_ok=True)
    with open(os.path.join(config.workdir, "bench_train.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    for name, value in result.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
