"""Per-device memory and causal work of ring attention, written to `<workdir>/bench_ring.json`.

  python -m experiments.bench_ring --config configs/bench_ring.py --config.workdir=runs/bench_ring

Runs on `config.num_devices` devices (the launcher sets that many fake host devices before JAX
starts). Memory is XLA's compiled `memory_analysis()` of one jitted forward + backward per
device; work is the number of allowed causal (query, key) pairs and of non-empty blocks per
device, contiguous vs zig-zag.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from longctx_jax.attention.ring import ring_attention
from longctx_jax.bench import machine
from longctx_jax.parallel import layout
from longctx_jax.provenance import provenance


def compiled_memory(config: ml_collections.ConfigDict, mesh: Mesh, seq_len: int,
                    context_parallel: str) -> dict:
    """Per-device bytes of one compiled forward + backward at `seq_len`.

    q is `[B, T, N, H]`, k and v `[B, T, K, H]`, all sharded over T on the mesh's `sequence` axis.
    """
    dtype = jnp.dtype(config.dtype)
    sharding = NamedSharding(mesh, PartitionSpec(None, "sequence"))
    shape = (config.batch, seq_len, config.num_heads, config.head_dim)
    q = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    kv = jax.ShapeDtypeStruct(shape[:2] + (config.num_kv_heads, config.head_dim), dtype, sharding=sharding)

    def loss(q, k, v):
        out = ring_attention(q, k, v, mesh=mesh, window=config.window, block_size=config.block_size,
                             context_parallel=context_parallel)
        return jnp.sum(out.astype(jnp.float32))

    start = time.perf_counter()
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv).compile()
    stats = compiled.memory_analysis()
    peak = (stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
            - stats.alias_size_in_bytes)
    tokens_per_device = config.batch * seq_len // config.num_devices
    return {
        "temp_bytes": int(stats.temp_size_in_bytes),
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "peak_bytes": int(peak),
        "peak_bytes_per_token_per_device": peak / tokens_per_device,
        "compile_s": time.perf_counter() - start,
    }


def causal_work(seq_len: int, num_devices: int, window: int | None) -> dict:
    """Per-device causal work, contiguous and zig-zag, with max/min ratios."""
    result = {}
    for name in ("natural", "zigzag"):
        perm = layout.layout_permutation(name, seq_len, num_devices)
        work = layout.shard_work(perm, perm, num_devices, causal=True, window=window)
        result[name] = {
            **work,
            "pairs_max_over_min": layout.imbalance(work["pairs"]),
            "blocks_max_over_min": layout.imbalance(work["blocks"]),
        }
    return result


def run(config: ml_collections.ConfigDict) -> dict:
    """Compiles ring attention at every `config.seq_lens` and counts its causal work.

    Args:
      config: a `configs/bench_ring.py` config; `jax.device_count()` must be at least
        `config.num_devices`.

    Returns:
      The result written to `<config.workdir>/bench_ring.json`.
    """
    if config.num_devices > jax.device_count():
        raise ValueError(f"num_devices={config.num_devices} but JAX has {jax.device_count()} devices; "
                         "set --xla_force_host_platform_device_count before JAX starts")
    mesh = jax.make_mesh((config.num_devices,), ("sequence",))
    rows = []
    for seq_len in config.seq_lens:
        row = {"seq_len": seq_len, "tokens_per_device": seq_len // config.num_devices}
        for cp in config.context_parallel:
            row[cp] = compiled_memory(config, mesh, seq_len, cp)
        row["work"] = causal_work(seq_len, config.num_devices, config.window)
        rows.append(row)
        summary = {cp: f"{row[cp]['peak_bytes'] / 2**20:.1f} MiB "
                   f"({row[cp]['peak_bytes_per_token_per_device']:.0f} B/token/device)"
                   for cp in config.context_parallel}
        print(f"seq {seq_len}: {summary}; causal pairs max/min contiguous "
              f"{row['work']['natural']['pairs_max_over_min']:.2f}, zig-zag "
              f"{row['work']['zigzag']['pairs_max_over_min']:.3f}", flush=True)
    result = {
        "config": config.to_dict(),
        "devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
        "machine": machine.machine(), **provenance(),
        "rows": rows,
        "peak_bytes_per_token_per_device_max_over_min": {
            cp: max(r[cp]["peak_bytes_per_token_per_device"] for r in rows)
            / min(r[cp]["peak_bytes_per_token_per_device"] for r in rows)
            for cp in config.context_parallel
        },
    }
    os.makedirs(config.workdir, exist_ok=True)
    path = os.path.join(config.workdir, "bench_ring.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
    return result
