"""Per-device compiled memory of a sharded train step, from abstract shapes (no weights).

  python -m experiments.bench_memory --config configs/bench_memory.py

For each row (a model shape, a sequence length, a `data x fsdp x sequence` mesh) on
`config.num_devices` fake host devices, builds the decoder and AdamW state with
`nnx.eval_shape` / `jax.eval_shape`, gives every leaf its sharding from the one rule table
(`longctx_jax.sharding`), lowers the jitted, state-donating train step
(`train.step.make_train_step`) on `jax.ShapeDtypeStruct` arguments, compiles it and reads
XLA's `memory_analysis()` per device. Beside it, the parameter and optimizer-state bytes each
device holds, computed from the shardings (`shard_shape`), so the two can be compared.

The fake device count is fixed when the backend starts, so `run_all` runs one subprocess per
device count (`experiments.bench_memory` with `--config.num_devices=N`), each writing
`<workdir>/devices_<N>.json`; `memory_table` renders those files as markdown and
`update_doc` writes the table into a doc between `TABLE_START` and `TABLE_END`.
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from longctx_jax import sharding
from longctx_jax.bench import machine
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.parallel import distributed
from longctx_jax.provenance import provenance
from longctx_jax.train.optimizer import make_optimizer
from longctx_jax.train.step import TrainState, abstract_train_state, make_train_step

TABLE_START = "<!-- generated:memory-table -->"  # the docs-block markers of bench/published.py
TABLE_END = "<!-- /generated:memory-table -->"
BATCH_FIELDS = ("inputs", "targets", "positions", "segment_ids", "loss_mask")
GIB = 2.0**30


def model_config(shape: Mapping[str, Any], num_layers: int | None = None) -> ModelConfig:
    """The decoder of a `config.models` entry: float32 params, bfloat16 compute, remat, ring."""
    fields = dict(shape)
    if num_layers is not None:
        fields["num_layers"] = num_layers
    return ModelConfig(**fields, dtype="bfloat16", param_dtype="float32", remat=True, attention_impl="ring")


def abstract_model_state(cfg: ModelConfig, optim: Mapping[str, Any], mesh: jax.sharding.Mesh
                         ) -> tuple[nnx.GraphDef, Any, TrainState]:
    """(graphdef, optimizer, TrainState of sharded `ShapeDtypeStruct`s) without any weights.

    Raises:
      ValueError: a parameter dim is not divisible by its mesh axes.
    """
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    tx = make_optimizer(optim, 1000)
    return graphdef, tx, abstract_train_state(params, tx, mesh)


def bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded `ShapeDtypeStruct`s (the largest shard)."""
    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * jnp.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))


def compile_row(shape: Mapping[str, Any], seq_len: int, mesh_sizes: Mapping[str, int],
                optim: Mapping[str, Any], num_layers: int | None = None) -> dict[str, Any]:
    """Compiled per-device memory of one train step of a `[data x fsdp, seq_len]` batch.

    Args:
      shape: ModelConfig fields of the model (`vocab_size`, `d_model`, `num_layers`, ...).
      seq_len: tokens per sequence T; the batch is `[data * fsdp, T]` (one sequence per
        data x fsdp group), so a device holds T / sequence tokens.
      mesh_sizes: `data`, `fsdp`, `sequence` (and optionally `tensor`) sizes whose product is
        the device count.
      optim: `config.optim` of the AdamW chain.
      num_layers: compile this many layers instead of the model's.

    Returns:
      argument / output / temp / alias bytes of `memory_analysis()`, the parameter and
      optimizer-state bytes per device computed from the shardings, and the compile time.
    """
    mesh_cfg = distributed.default_mesh_config()
    mesh_cfg.update(dict(mesh_sizes))
    mesh = distributed.mesh_from_config(ml_collections.ConfigDict({"mesh": mesh_cfg}))
    batch_size = int(mesh_sizes.get("data", 1)) * int(mesh_sizes["fsdp"])
    distributed.check_batch_shape(batch_size, seq_len, mesh)
    cfg = model_config(shape, num_layers)
    graphdef, tx, state = abstract_model_state(cfg, optim, mesh)
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {name: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=batch_sharding)
             for name in BATCH_FIELDS}
    step = make_train_step(graphdef, tx, use_segment_ids=True)
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        stats = step.lower(state, batch).compile().memory_analysis()
    return {
        "num_layers_compiled": cfg.num_layers,
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes),
        "param_bytes": bytes_per_device(state.params),
        "opt_state_bytes": bytes_per_device(state.opt_state),
        "batch_bytes": bytes_per_device(batch),
        "compile_s": time.perf_counter() - start,
    }


def _linear_in_layers(full_layers: int, small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """Extrapolates every byte count from two compiled depths L1 < L2 to `full_layers`."""
    l1, l2 = small["num_layers_compiled"], large["num_layers_compiled"]
    out = dict(large)
    for key, value in large.items():
        if key.endswith("_bytes"):
            per_layer = (value - small[key]) / (l2 - l1)
            out[key] = int(round(value + per_layer * (full_layers - l2)))
    out["compile_s"] = small["compile_s"] + large["compile_s"]
    out["num_layers_compiled"] = [l1, l2]
    out["compiled_temp_bytes"] = [small["temp_bytes"], large["temp_bytes"]]  # at L1, L2
    return out


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Compiles every row of `config.rows` on this process's `config.num_devices` devices.

    Writes and returns `<workdir>/devices_<N>.json`: the models, optimizer, and per row the
    model, sequence length, mesh, tokens per device and the bytes of `compile_row` (every
    byte count extrapolated linearly in depth from `config.layers_compiled` when set).
    """
    num_devices = int(config.num_devices)
    if jax.device_count() != num_devices:
        raise ValueError(f"config.num_devices is {num_devices} but JAX sees {jax.device_count()} devices; "
                         "run through experiments.bench_memory, which sets the fake device count")
    rows = []
    for row in config.rows:
        if int(row["devices"]) != num_devices:
            continue
        shape = config.models[row["model"]].to_dict()
        mesh_sizes = {axis: int(row.get(axis, 1)) for axis in ("data", "fsdp", "sequence")}
        depths = config.get("layers_compiled")
        if depths:
            small, large = (compile_row(shape, int(row["seq_len"]), mesh_sizes, config.optim, d)
                            for d in depths)
            measured = _linear_in_layers(int(shape["num_layers"]), small, large)
        else:
            measured = compile_row(shape, int(row["seq_len"]), mesh_sizes, config.optim)
        result = {"model": row["model"], "seq_len": int(row["seq_len"]), "mesh": mesh_sizes,
                  "tokens_per_device": int(row["seq_len"]) // mesh_sizes["sequence"], **measured}
        print(json.dumps(result), flush=True)
        rows.append(result)
    if not rows:
        raise ValueError(f"config.rows has no row with devices={num_devices}")
    out = {"num_devices": num_devices, "jax_version": jax.__version__, "backend": jax.default_backend(),
           "machine": machine.machine(), **provenance(),
           "models": config.models.to_dict(), "optim": config.optim.to_dict(),
           "dtype": "bfloat16 compute, float32 parameters and AdamW moments", "remat": True,
           "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "layers_compiled": list(config.get("layers_compiled") or []), "rows": rows}
    os.makedirs(config.workdir, exist_ok=True)
    with open(os.path.join(config.workdir, f"devices_{num_devices}.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
    return out


def run_all(config: ml_collections.ConfigDict, argv: Sequence[str]) -> list[dict[str, Any]]:
    """Runs `experiments.bench_memory` once per device count of `config.rows`, in subprocesses.

    Args:
      config: the parent's config (its rows say which device counts to run).
      argv: the parent's command-line arguments (config file and overrides), passed on.
    """
    results = []
    for count in sorted({int(row["devices"]) for row in config.rows}):
        subprocess.run([sys.executable, "-m", "experiments.bench_memory", *argv,
                        f"--config.num_devices={count}"], check=True)
        with open(os.path.join(config.workdir, f"devices_{count}.json"), encoding="utf-8") as f:
            results.append(json.load(f))
    return results


def load_results(results_dir: str) -> list[dict[str, Any]]:
    """Every `devices_<N>.json` of a directory, by device count."""
    names = [n for n in os.listdir(results_dir) if n.startswith("devices_") and n.endswith(".json")]
    results = []
    for name in names:
        with open(os.path.join(results_dir, name), encoding="utf-8") as f:
            results.append(json.load(f))
    return sorted(results, key=lambda r: r["num_devices"])


def memory_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table (GiB per device) of the rows of `run`'s results.

    Rows compiled at two depths show the compiled temp at both; where temp fell from the
    smaller depth to the larger one the linear extrapolation is meaningless and its cells
    read "n/a".
    """
    lines = ["| model | tokens / seq | devices | mesh data x fsdp x sequence | tokens / device | "
             "params (shardings) | AdamW state (shardings) | XLA arguments | XLA temp, compiled depths | "
             "XLA temp, full depth | XLA peak (args + outs + temp - aliased) |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    rows = [(r["num_devices"], row) for r in results for row in r["rows"]]
    for devices, row in sorted(rows, key=lambda x: (x[1]["model"], x[1]["seq_len"], x[0])):
        mesh = row["mesh"]
        cells = [row["model"], f"{row['seq_len'] // 1024}K", str(devices),
                 f"{mesh['data']} x {mesh['fsdp']} x {mesh['sequence']}", f"{row['tokens_per_device']:,}"]
        cells += [f"{row[k] / GIB:.2f}" for k in ("param_bytes", "opt_state_bytes", "argument_bytes")]
        depths, temps = row["num_layers_compiled"], row.get("compiled_temp_bytes")
        if isinstance(depths, list) and temps:
            cells.append(", ".join(f"{t / GIB:.2f} ({d} L)" for d, t in zip(depths, temps, strict=True)))
            valid = temps[1] >= temps[0]
        else:
            cells.append(f"{row['temp_bytes'] / GIB:.2f} ({depths} L)")
            valid = True
        peak = row["argument_bytes"] + row["output_bytes"] + row["temp_bytes"] - row["alias_bytes"]
        cells += [f"{row['temp_bytes'] / GIB:.2f}", f"{peak / GIB:.2f}"] if valid else ["n/a", "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_doc(doc_path: str, results_dir: str) -> str:
    """Replaces the text between `TABLE_START` and `TABLE_END` in `doc_path` with the table."""
    with open(doc_path, encoding="utf-8") as f:
        text = f.read()
    if TABLE_START not in text or TABLE_END not in text:
        raise ValueError(f"{doc_path} has no {TABLE_START} ... {TABLE_END} markers")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    table = memory_table(load_results(results_dir))
    with open(doc_path, "w", encoding="utf-8") as f:
        f.write(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}")
    return table
