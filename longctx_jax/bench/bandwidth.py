"""Memory read bandwidth of this CPU, and what a SmolLM2 decode step must read at that rate.

  python -m experiments.bench_bandwidth --config configs/bench_bandwidth.py

Issue #20 asks that decode stream weights and cache "at close to memory bandwidth", and that
the bandwidth be stated. A decode step reads every parameter once and every cached key and
value once, so at read bandwidth R its floor is `bytes_per_token / R`. Measured: the sum of a
`size_mib` float32 array (far larger than the last-level cache), each pass reading it once,
by XLA (a jitted `jnp.sum`), numpy and torch (`threads` threads), interleaved, `repeats`
times each; GB/s = bytes / seconds (10^9 bytes). The model side is exact arithmetic on
SmolLM2's config (read from the GGUF's metadata, no weights loaded): float32 parameters plus
the float32 cache of `context` tokens. `decode_table` sets these beside the committed decode
rows of `bench_forward` (docs/kv_cache.md).
"""

import json
import os
import statistics
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from longctx_jax.atomic import write_atomically
from longctx_jax.bench import machine
from longctx_jax.models import gguf_file, llama, memory
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.provenance import provenance


def decode_bytes(cfg: ModelConfig, context: int, dtype: str = "float32") -> dict[str, int]:
    """Bytes one decode step reads: every parameter (of the `Decoder` `cfg` builds, abstractly),
    and the K / V cache of `context` tokens (`models.memory.kv_cache_bytes`), both in `dtype`.

    Returns:
      {"parameters": ..., "cache": ..., "total": ...}.
    """
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) * memory.itemsize(dtype)
    cache = memory.kv_cache_bytes(memory.CacheShape(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim),
                                  length=context, dtype=dtype)
    return {"parameters": params, "cache": cache, "total": params + cache}


def smollm2_config(path: str | None = None) -> ModelConfig:
    """SmolLM2's `ModelConfig` from its GGUF metadata (the weights stay on disk)."""
    metadata, tensors = gguf_file.read(path or llama.smollm2_path())
    return llama.gguf_config(metadata, set(tensors), vocab_size=tensors["token_embd.weight"].shape[0])


def read_bandwidth(size_mib: int, repeats: int, threads: int) -> dict[str, dict]:
    """{library: {"gbs": median GB/s, "runs_gbs": [...]}} for XLA, numpy and torch summing one array."""
    import jax.numpy as jnp
    import torch

    torch.set_num_threads(threads)
    x = np.random.default_rng(0).standard_normal(size_mib * (1 << 20) // 4, np.float32)
    nbytes = x.nbytes
    xj, xt = jnp.asarray(x), torch.from_numpy(x)
    total = jax.jit(jnp.sum)
    readers = {"xla": lambda: total(xj).block_until_ready(), "numpy": lambda: x.sum(),
               "torch": lambda: xt.sum().item()}
    for read in readers.values():
        read()  # compile, warm the pages
    seconds: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(repeats):
        for name, read in readers.items():
            start = time.perf_counter()
            read()
            seconds[name].append(time.perf_counter() - start)
    return {name: {"gbs": nbytes / statistics.median(s) / 1e9, "runs_gbs": [nbytes / t / 1e9 for t in s]}
            for name, s in seconds.items()}


# Idle seconds before each timed reader (a decode run, a read floor, an attention layer): threads
# the last reader left spinning (torch's OpenMP team, XLA's pool) have gone idle by then and do not
# take the cores from the next. Without it cpu_decode took 22 ms instead of 17 after torch's sum.
PAUSE_S = 0.2


def torch_read_timer(nbytes: int) -> Callable[[], float] | None:
    """A function timing one read of `nbytes` of float32 by torch (a sum, every core), in
    seconds: the read floor `forward.bench_decode` sets each decode run against. None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    data = torch.ones(nbytes // 4)  # written once: its pages are mapped before timing

    def read() -> float:
        start = time.perf_counter()
        float(data.sum())
        return time.perf_counter() - start

    read()
    return read


def run(cfg: ml_collections.ConfigDict) -> dict:
    """Measures, writes `<workdir>/bench_bandwidth.json`, returns it."""
    if cfg.size_mib < 64 or cfg.repeats < 1 or cfg.context < 0:
        raise ValueError(f"size_mib must be >= 64 (beyond the caches), repeats >= 1 and context >= 0, got "
                         f"{cfg.size_mib}, {cfg.repeats}, {cfg.context}")
    need = decode_bytes(smollm2_config(cfg.checkpoint or None), cfg.context)
    result = {"machine": machine.machine(), **provenance(), "size_mib": cfg.size_mib,
              "repeats": cfg.repeats, "threads": cfg.threads,
              "read": read_bandwidth(cfg.size_mib, cfg.repeats, cfg.threads),
              "smollm2_decode": {"context": cfg.context, "bytes": need}}
    print(", ".join(f"{k} {v['gbs']:.1f} GB/s" for k, v in result["read"].items()), flush=True)
    os.makedirs(cfg.workdir, exist_ok=True)
    path = os.path.join(cfg.workdir, "bench_bandwidth.json")
    write_atomically(path, json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return result


def decode_table(bandwidths: dict[str, dict], forward_runs: list[tuple[str, str, dict]]) -> str:
    """Markdown: each machine's measured read bandwidth, and each committed decode row against
    its own machine's floor; rows whose run measured a read floor after every decode run
    (`forward.bench_decode`) also against that (the median of the runs' step / floor ratios).

    Args:
      bandwidths: machine short name (as in `forward_runs`, e.g. "EPYC") -> a `run` result
        measured on that machine.
      forward_runs: `speed_tables.runs(...)` of the committed `bench_forward` results. A row of a
        machine with no bandwidth measurement says so instead of a share.
    """
    lines = []
    for name, bandwidth in bandwidths.items():
        read = bandwidth["read"]
        need = bandwidth["smollm2_decode"]["bytes"]
        lines.append(
            f"{name}: read bandwidth ({bandwidth['size_mib']} MiB float32 summed, median of "
            f"{bandwidth['repeats']} interleaved runs, [slowest, fastest] run): "
            + "; ".join(f"{k} {v['gbs']:.1f} GB/s [{min(v['runs_gbs']):.1f}, {max(v['runs_gbs']):.1f}]"
                        for k, v in read.items())
            + f". A SmolLM2 decode step at {bandwidth['smollm2_decode']['context']:,} cached tokens reads "
            f"{need['parameters'] / 1e6:.0f} MB of parameters and {need['cache'] / 1e6:.0f} MB of cache, "
            f"{need['total'] / 1e6:.0f} MB in all: {need['total'] / _best(bandwidth) / 1e6:.1f} ms at the "
            "fastest reader's median.")
        lines.append("")
    lines += ["| machine | date, run | decode ms / token | GB/s read | share of the measured bandwidth | "
              "same run: read floor GB/s | same run: step / floor time (each run) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, date, r in forward_runs:
        decode, bandwidth = r.get("decode"), bandwidths.get(label)
        if not decode:
            continue
        ms = decode["wall_s"] / decode["steps"] * 1e3
        floor = decode.get("read_floor")  # runs from 2026-12-06 on: torch's read after every run
        same_run = (f"{floor['gbs']:.1f} | {statistics.median(floor['step_over_floor']):.2f} "
                    f"({', '.join(f'{x:.2f}' for x in floor['step_over_floor'])})") if floor else "- | -"
        if bandwidth is None:
            lines.append(f"| {label} | {date} | {ms:.1f} | - | bandwidth not measured on {label} | "
                         f"{same_run} |")
            continue
        if decode.get("context") != bandwidth["smollm2_decode"]["context"]:
            continue  # the floor holds for the measured context only
        rate = bandwidth["smollm2_decode"]["bytes"]["total"] / (ms / 1e3) / 1e9
        lines.append(f"| {label} | {date} | {ms:.1f} | {rate:.1f} | {rate / _best(bandwidth):.0%} | "
                     f"{same_run} |")
    return "\n".join(lines) + "\n"


def _best(bandwidth: dict) -> float:
    """The fastest reader's median, GB/s."""
    return max(v["gbs"] for v in bandwidth["read"].values())
