"""A decode step's attention over every layer's KV cache: cpu_decode vs dense vs torch sdpa, against
the read floor measured in the same run.

  python -m experiments.bench_decode_attention --config configs/bench_decode_attention.py

Issue #20 asks that decode stream the cache at close to memory bandwidth. A decoded token reads
every layer's cached keys and values once, from memory (a model's caches are far larger than
the last-level cache), so this times what one token's attention does in a model: `layers`
distinct caches `[1, capacity, kv_heads, head_dim]` float32 whose first `filled` slots are
written (the rest empty, at a position past every query, as `KVCache` leaves them), one query
row at position `filled - 1`, each layer's output feeding the next layer's query
(`q += 1e-3 * out`) so the calls run one after another. Within each of `rounds` rounds, in turn:
  - every implementation of `impls` through `dispatch.attend`, one jitted function over all
    layers ("cpu_decode": the C++ kernel; "dense": XLA's einsums over the whole cache);
  - torch's sdpa over each layer's written part as `[1, heads, filled, head_dim]`, what
    transformers' cache holds (the `bench` extra; skipped without torch);
  - the read floor: torch summing the same written K and V, the bytes a step must read, on
    every core.
Each reader starts `pause_s` after the last one finished, so threads a library leaves spinning
after its work (torch's OpenMP team, XLA's pool) have gone idle and do not take the cores from
the next reader. Reported: median and every round's milliseconds; GB/s = the written cache's bytes
(layers x 2 x filled x kv_heads x head_dim x 4) / median seconds (10^9 bytes), so an
implementation that reads empty slots gets no credit for them; max |out - dense| per
implementation. `table` renders the committed runs (docs/kv_cache.md), each time ratio with
its range over the rounds.
"""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from longctx_jax import cpu
from longctx_jax.atomic import write_atomically
from longctx_jax.attention import dispatch
from longctx_jax.attention.spec import AttentionSpec
from longctx_jax.bench import machine
from longctx_jax.models.kv_cache import EMPTY_POSITION
from longctx_jax.provenance import provenance

IMPLS = ("cpu_decode", "dense")


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field."""
    if cfg.layers < 1 or cfg.rounds < 1 or cfg.pause_s < 0:
        raise ValueError(f"layers and rounds must be >= 1 and pause_s >= 0, got {cfg.layers}, {cfg.rounds}, "
                         f"{cfg.pause_s}")
    if cfg.heads < 1 or cfg.kv_heads < 1 or cfg.heads % cfg.kv_heads or cfg.head_dim < 1:
        raise ValueError(f"need heads a multiple of kv_heads, all >= 1, got {cfg.heads} / {cfg.kv_heads} x "
                         f"{cfg.head_dim}")
    bad = [impl for impl in cfg.impls if impl not in IMPLS]
    if bad or not cfg.impls:
        raise ValueError(f"impls must be a non-empty subset of {IMPLS}, got {tuple(cfg.impls)}")
    for case in cfg.cases:
        if len(case) != 2 or not 1 <= case[0] <= case[1]:
            raise ValueError(f"each case is (filled, capacity) with 1 <= filled <= capacity, got {case!r}")


def _caches(cfg, filled: int, capacity: int, seed: int = 0) -> list[jax.Array]:
    """2 x layers caches [1, capacity, kv_heads, head_dim]: random where written, zeros beyond."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2 * cfg.layers):
        x = np.zeros((1, capacity, cfg.kv_heads, cfg.head_dim), np.float32)
        x[:, :filled] = rng.standard_normal((1, filled, cfg.kv_heads, cfg.head_dim), np.float32)
        out.append(jnp.asarray(x))
    return out


def _step(impl: str, spec: AttentionSpec, layers: int):
    """jit: q and the 2 x layers caches -> the last layer's q (each layer's output feeds the next)."""
    def step(q, caches):
        for layer in range(layers):
            q = q + 1e-3 * dispatch.attend(q, caches[2 * layer], caches[2 * layer + 1], spec, impl=impl)
        return q
    return jax.jit(step)


def _torch_readers(cfg, caches: list[jax.Array], filled: int, q: np.ndarray) -> dict | None:
    """{"torch_sdpa": fn, "read_floor": fn} over the written part in torch's layout; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    # [1, filled, K, H] -> [1, K, filled, H], contiguous: the layout of transformers' cache
    written = [torch.from_numpy(np.array(c[:, :filled])).transpose(1, 2).contiguous() for c in caches]
    q_t = torch.from_numpy(np.array(q)).transpose(1, 2).contiguous()  # [1, N, 1, H]

    def sdpa():
        with torch.inference_mode():
            x = q_t
            for layer in range(cfg.layers):
                out = torch.nn.functional.scaled_dot_product_attention(
                    x, written[2 * layer], written[2 * layer + 1], enable_gqa=cfg.heads != cfg.kv_heads)
                x = x + 1e-3 * out
            return x

    def read_floor():
        with torch.inference_mode():
            return sum(float(t.sum()) for t in written)

    return {"torch_sdpa": sdpa, "read_floor": read_floor, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def bench_case(cfg, filled: int, capacity: int) -> dict:
    """One (filled, capacity) case: every reader's milliseconds per round, GB/s, max |out - dense|."""
    caches = _caches(cfg, filled, capacity)
    positions = np.where(np.arange(capacity) < filled, np.arange(capacity), EMPTY_POSITION)
    spec = AttentionSpec(causal=True, q_positions=jnp.array([[filled - 1]]),
                         k_positions=jnp.asarray(positions)[None])
    q = jax.random.normal(jax.random.key(1), (1, 1, cfg.heads, cfg.head_dim))
    readers, outputs = {}, {}
    for impl in cfg.impls:
        fn = _step(impl, spec, cfg.layers)
        outputs[impl] = np.asarray(fn(q, caches))  # compiles
        readers[impl] = lambda fn=fn: jax.block_until_ready(fn(q, caches))
    peer = _torch_readers(cfg, caches, filled, q) if cfg.torch_peer else None
    if peer is not None:
        outputs["torch_sdpa"] = peer["torch_sdpa"]().transpose(1, 2).numpy()
        readers.update(torch_sdpa=peer["torch_sdpa"], read_floor=peer["read_floor"])
        peer["read_floor"]()
    ms: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(cfg.rounds):
        for name, read in readers.items():
            time.sleep(cfg.pause_s)  # the last reader's spinning threads (torch's, XLA's) go idle
            start = time.perf_counter()
            read()
            ms[name].append(1000 * (time.perf_counter() - start))
    nbytes = cfg.layers * 2 * filled * cfg.kv_heads * cfg.head_dim * 4
    reference = outputs.get("dense")
    row = {"filled": filled, "capacity": capacity, "written_bytes": nbytes, "readers": {}}
    if peer is not None:
        row.update(torch=peer["torch"], torch_threads=peer["threads"])
    for name, runs in ms.items():
        median = statistics.median(runs)
        entry = {"ms": median, "runs_ms": runs, "gbs": nbytes / (median / 1000) / 1e9}
        if reference is not None and name in outputs:
            entry["max_abs_diff_vs_dense"] = float(np.max(np.abs(outputs[name] - reference)))
        row["readers"][name] = entry
    print({"filled": filled, "capacity": capacity,
           **{name: round(entry["ms"], 2) for name, entry in row["readers"].items()}}, flush=True)
    return row


def run(cfg: ml_collections.ConfigDict) -> dict:
    """Measures every case, writes `<workdir>/bench_decode_attention.json`, returns it."""
    check_config(cfg)
    result = {"machine": machine.machine(), **provenance(), "config": cfg.to_dict(), "cases": []}
    with jax.default_device(jax.devices("cpu")[0]):
        for filled, capacity in cfg.cases:
            result["cases"].append(bench_case(cfg, int(filled), int(capacity)))
    os.makedirs(cfg.workdir, exist_ok=True)
    path = os.path.join(cfg.workdir, "bench_decode_attention.json")
    write_atomically(path, json.dumps(result, indent=2, default=str))
    print(f"wrote {path}")
    return result


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "-"
    return f"{entry['ms']:.2f} ({min(entry['runs_ms']):.2f}-{max(entry['runs_ms']):.2f})"


def _paired(numerator: dict, denominator: dict) -> str:
    """"1.30 (1.12-1.51)": the ratio of the two readers' medians, then the least and greatest
    ratio within one round (the readers alternate within a round, so each round pairs them)."""
    per_round = [a / b for a, b in zip(numerator["runs_ms"], denominator["runs_ms"], strict=True)]
    return f"{numerator['ms'] / denominator['ms']:.2f} ({min(per_round):.2f}-{max(per_round):.2f})"


def _max_diffs(r: dict) -> str:
    names = [name for name in ("cpu_decode", "torch_sdpa") if all(name in c["readers"] for c in r["cases"])]
    worst = {name: max(c["readers"][name].get("max_abs_diff_vs_dense", 0.0) for c in r["cases"])
             for name in names}
    return ", ".join(f"{name} {diff:.1e}" for name, diff in worst.items())


def table(results: list[tuple[str, str, dict]]) -> str:
    """Markdown: one row per (committed run, case), every reader's ms and cpu_decode against the floor."""
    lines = ["| machine | date, run | written / slots | cpu_decode ms (range) | GB/s | dense ms (range) | "
             "torch sdpa ms (range) | read floor ms (range), GB/s | cpu_decode / floor time (rounds) | "
             "sdpa / cpu_decode time (rounds) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, date, r in results:
        for case in r["cases"]:
            got = case["readers"]
            ours, floor, sdpa = got.get("cpu_decode"), got.get("read_floor"), got.get("torch_sdpa")
            cells = [f"{case['filled']:,} / {case['capacity']:,}", _cell(ours),
                     f"{ours['gbs']:.1f}" if ours else "-", _cell(got.get("dense")), _cell(sdpa),
                     f"{_cell(floor)}, {floor['gbs']:.1f}" if floor else "-",
                     _paired(ours, floor) if ours and floor else "-",
                     _paired(sdpa, ours) if ours and sdpa else "-"]
            lines.append(f"| {label} | {date} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Per run: " + "; ".join(
        f"{date}: {cpu.label(r['machine']['cpu'])}, {r['config']['layers']} layers of "
        f"{r['config']['heads']} / {r['config']['kv_heads']} heads x {r['config']['head_dim']}, "
        f"{r['config']['rounds']} rounds, cpu_flash build `{r['machine']['cpu_flash'].get('tag', '-')}`"
        + (f", torch {r['cases'][0]['torch']} ({r['cases'][0]['torch_threads']} threads)"
           if r["cases"] and "torch" in r["cases"][0] else "")
        + f", commit {r['git_commit'][:10]}{' (uncommitted changes)' if r.get('git_dirty') else ''}"
        + f", max |out - dense| {_max_diffs(r)}"
        for _, date, r in results) + ".")
    return "\n".join(lines) + "\n"
