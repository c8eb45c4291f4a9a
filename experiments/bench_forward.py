"""Prefill and decode tokens/s of the shipped SmolLM2-135M, written to `<workdir>/bench_forward.json`.

  python -m experiments.bench_forward --config configs/bench_forward.py --config.workdir=runs/bench_forward

Prefill: `Decoder.decode` over a whole prompt of T tokens into an empty cache of T slots
(last-token logits only), compiled once per length, then timed `repeats` times (median).
Decode: one-token steps of the jitted `Generator.decode_step` with `decode_context` tokens
already in the cache (the cache is filled with random keys/values: the cost of a step does
not depend on their content), timed over `decode_steps` steps. Wall and process CPU seconds
are both recorded; the latter is steadier on a shared host.
"""

import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app
from flax import nnx
from ml_collections import config_flags

from longctx_jax.models import llama, memory
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.generate import Generator
from longctx_jax.models.kv_cache import KVCache

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_forward.py", "Benchmark config file.")


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_prefill(model, length: int, repeats: int) -> dict:
    graphdef, state = nnx.split(model)
    cfg = model.cfg

    @jax.jit
    def prefill(state, tokens_BT):
        cache = KVCache.create(num_layers=cfg.num_layers, batch=1, capacity=length,
                               num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, dtype=cfg.dtype)
        logits, cache = nnx.merge(graphdef, state).decode(tokens_BT, cache, last_only=True)
        return logits, cache.k[-1]

    tokens = jax.random.randint(jax.random.key(0), (1, length), 0, cfg.vocab_size)
    compile_wall, _ = _timed(lambda: jax.block_until_ready(prefill(state, tokens)))
    runs = [_timed(lambda: jax.block_until_ready(prefill(state, tokens))) for _ in range(repeats)]
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    return dict(length=length, first_call_s=compile_wall, wall_s=wall, cpu_s=cpu,
                tokens_per_s=length / wall, runs=[dict(wall_s=w, cpu_s=c) for w, c in runs])


def bench_decode(model, context: int, steps: int) -> dict:
    gen = Generator(model, cache_size=context + steps + 1)
    empty = gen.make_cache()
    keys = jax.random.split(jax.random.key(1), 2 * len(empty.k))
    fill = [jax.random.normal(k, empty.k[0].shape, empty.k[0].dtype) for k in keys]
    cache = KVCache(k=tuple(fill[:len(empty.k)]), v=tuple(fill[len(empty.k):]),
                    length=jnp.asarray(context, jnp.int32))
    token = jnp.zeros((1, 1), jnp.int32)
    key = jax.random.key(2)
    out, _, cache = gen.decode_step(gen.state, token, cache, key)  # compile
    jax.block_until_ready(out)

    def run():
        nonlocal cache, out
        for _ in range(steps):
            out, _, cache = gen.decode_step(gen.state, out[:, None], cache, key)
        jax.block_until_ready(out)

    wall, cpu = _timed(run)
    return dict(context=context, steps=steps, wall_s=wall, cpu_s=cpu, tokens_per_s=steps / wall,
                ms_per_token=1000 * wall / steps)


def main(argv) -> None:
    del argv
    cfg = _CONFIG.value
    path = cfg.gguf_path or llama.smollm2_path()
    model, _ = llama.load_gguf(path, dtype=cfg.dtype)  # dense attention for one-token decode steps
    # The same weights under the prefill attention implementation.
    abstract = nnx.eval_shape(lambda: Decoder(model.cfg.replace(attention_impl=cfg.attention_impl),
                                              rngs=nnx.Rngs(0)))
    prefill_model = nnx.merge(nnx.graphdef(abstract), nnx.state(model))
    shape = memory.CacheShape(model.cfg.num_layers, model.cfg.num_kv_heads, model.cfg.head_dim)
    result = dict(model=os.path.basename(path), dtype=cfg.dtype, prefill_attention_impl=cfg.attention_impl,
                  decode_attention_impl=model.cfg.attention_impl,
                  backend=jax.default_backend(), devices=str(jax.devices()), cpu_count=os.cpu_count(),
                  machine=platform.machine(), prefill=[], decode=None)
    os.makedirs(cfg.workdir, exist_ok=True)
    out_path = os.path.join(cfg.workdir, "bench_forward.json")
    for length in cfg.prefill_lengths:
        row = bench_prefill(prefill_model, int(length), cfg.repeats)
        row["kv_cache_bytes"] = memory.kv_cache_bytes(shape, length=int(length), dtype=cfg.dtype)
        result["prefill"].append(row)
        print(f"prefill {length:6d}: {row['tokens_per_s']:8.1f} tokens/s ({row['wall_s']:.2f}s wall, "
              f"{row['cpu_s']:.2f}s CPU)", flush=True)
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)
    if cfg.decode_steps:
        result["decode"] = bench_decode(model, int(cfg.decode_context), int(cfg.decode_steps))
        d = result["decode"]
        print(f"decode at {d['context']}: {d['tokens_per_s']:.1f} tokens/s "
              f"({d['ms_per_token']:.1f} ms/token)")
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    app.run(main)
