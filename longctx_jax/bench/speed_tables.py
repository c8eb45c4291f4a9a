"""Docs tables of the CPU speed benchmarks, one row per committed run, each naming its machine.

Inputs are the JSONs `experiments.bench_forward` and `experiments.bench_attention` write, copied
to `docs/results/bench_forward/` and `docs/results/bench_attention_gqa/` as
`<YYYY-MM-DD>-<machine>-<run>.json`: the date the run was measured, the machine's short name (a row's
first cell, upper-cased: the docs list each machine under that name, and the JSON records its
CPU and the cpu_flash build) and a name for the code state it measured. The bars are issue
#20's, fixed before the runs: SmolLM2 prefill at 8K at least 1.1x transformers' tokens/s and
decode at 8K at least 1.0x; the cpu_flash attention layer at least as fast as torch's sdpa (a
time ratio sdpa / cpu_flash of at least 1.0). A row says whether its run met the bar (by the
ratio of the medians); beside each ratio, where a side was timed more than once, the range over
every pairing of the two sides' runs (the slowest of ours against the fastest of theirs, and the
reverse). Nothing is averaged across machines.
"""

import json
from pathlib import Path

from longctx_jax import cpu

PREFILL_BAR = 1.1  # ours / transformers tokens/s, prefill at 8K
DECODE_BAR = 1.0  # ours / transformers tokens/s, decode with 8K cached
ATTENTION_BAR = 1.0  # sdpa seconds / cpu_flash seconds


def machine_label(machine: dict) -> str:
    """"AMD EPYC, 2 cores, AVX2" from a `bench.machine.machine()` record."""
    return cpu.label(machine["cpu"])


def runs(folder: Path) -> list[tuple[str, str, dict]]:
    """(machine, "<date> <run>", result) of every committed `<date>-<machine>-<run>.json`, by name."""
    out = []
    for path in sorted(folder.glob("*.json")):
        name, _, run = path.stem[11:].partition("-")
        with open(path, encoding="utf-8") as f:
            out.append((name.upper(), f"{path.stem[:10]} `{run}`", json.load(f)))
    return out


def _met(ratio: float, bar: float) -> str:
    return f"{'yes' if ratio >= bar else '**no**'} (bar {bar:.1f})"


def _walls(row: dict) -> str:
    each = ", ".join(f"{r['wall_s']:.2f}" for r in row.get("runs", []))
    return f"{row['wall_s']:.2f}" + (f" ({each})" if each else "")


def _ratio(ratio: float, numerator_s: list[float], denominator_s: list[float]) -> str:
    """"1.28 (1.20-1.35)": the ratio of the medians, then the least and greatest run seconds of one
    side over run seconds of the other, over every pairing of their runs."""
    if len(numerator_s) * len(denominator_s) <= 1:
        return f"{ratio:.2f}"
    low, high = min(numerator_s) / max(denominator_s), max(numerator_s) / min(denominator_s)
    return f"{ratio:.2f} ({low:.2f}-{high:.2f})"


def _run_walls(row: dict) -> list[float]:
    return [r["wall_s"] for r in row.get("runs") or []] or [row["wall_s"]]


def forward_table(results: list[tuple[str, dict]]) -> str:
    """SmolLM2 prefill and decode tokens/s, ours vs transformers, per run."""
    lines = ["| machine | date, run | phase | length | ours: wall s (runs) | ours: tokens/s | "
             "transformers: wall s (runs) | transformers: tokens/s | ours / transformers (range over runs) | "
             "meets the bar |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, date, r in results:
        hf = r["hf"]
        for ours, theirs in zip(r["prefill"], hf["prefill"], strict=True):
            ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
            bar = _met(ratio, PREFILL_BAR) if ours["length"] == 8192 else "-"
            gemms = "cpu_blas" if r.get("prefill_matmul_blas") else "xla"  # runs before cpu_blas: XLA
            phase = f"prefill (GEMMs: {gemms})"
            lines.append(f"| {label} | {date} | {phase} | {ours['length']:,} | {_walls(ours)} | "
                         f"{ours['tokens_per_s']:.1f} | {_walls(theirs)} | {theirs['tokens_per_s']:.1f} | "
                         f"{_ratio(ratio, _run_walls(theirs), _run_walls(ours))} | {bar} |")
        if r.get("decode") and hf.get("decode"):
            ours, theirs = r["decode"], hf["decode"]
            ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
            bar = _met(ratio, DECODE_BAR) if ours["context"] == 8192 else "-"
            impl = r.get("decode_attention_resolved", "dense")
            gemms = r.get("decode_matmul", "xla")  # runs before the few-row handler: XLA
            if ours.get("decode_layout") == "transposed":  # runs before decode_layout: as stored
                gemms += ", weights [out, in]"
            lines.append(f"| {label} | {date} | decode ({impl}; GEMMs: {gemms}), {ours['steps']} steps | "
                         f"{ours['context']:,} cached | {_walls(ours)} | {ours['tokens_per_s']:.2f} | "
                         f"{_walls(theirs)} | {theirs['tokens_per_s']:.2f} | "
                         f"{_ratio(ratio, _run_walls(theirs), _run_walls(ours))} | {bar} |")
    lines.append("")
    lines.append("Per run: " + "; ".join(
        f"{d}: {machine_label(r['machine'])}; transformers {r['hf']['transformers']} / "
        f"torch {r['hf']['torch']} ({r['hf']['threads']} threads), "
        f"max |logit diff| {r['hf']['hf_max_abs_logit_diff']:.1e} at {r['hf']['parity_length']:,} tokens, "
        f"cpu_flash build `{r['machine']['cpu_flash']['tag']}`"
        + (f", commit {r['git_commit'][:10]}{' (uncommitted changes)' if r.get('git_dirty') else ''}"
           if "git_commit" in r else "")
        for _, d, r in results) + ".")
    return "\n".join(lines) + "\n"


def _seconds(row: dict) -> str:
    """Median forward seconds, and every run's seconds where the JSON keeps them."""
    runs = row.get("forward_runs_s") or []
    each = f" ({', '.join(f'{t:.3f}' for t in runs)})" if len(runs) > 1 else ""
    return f"{row['forward_seconds']:.3f}{each}"


def _forward_runs(row: dict) -> list[float]:
    return row.get("forward_runs_s") or [row["forward_seconds"]]


def attention_table(results: list[tuple[str, dict]]) -> str:
    """One causal attention layer (the runs' heads), cpu_flash (the build it ran) vs blockwise vs torch
    sdpa, per run."""
    lines = ["| machine | date, run | cpu_flash build | heads (q / kv) x dim | n | cpu_flash s (runs) | "
             "blockwise s (runs) | torch sdpa s (runs) | sdpa / cpu_flash (range over runs) | "
             "meets the bar |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, date, r in results:
        by = {(row["impl"], row["seq_len"]): row for row in r["cpu"] + r.get("cpu_torch_sdpa", [])}
        for n in r["config"]["lengths"]:
            flash, sdpa = by.get(("cpu_flash", n)), by.get(("torch_sdpa", n))
            if flash is None or "forward_seconds" not in flash:
                continue
            block = by.get(("blockwise", n), {})
            heads = f"{flash['heads']} / {flash['kv_heads']} x {flash['head_dim']}"
            cells = [_seconds(flash), _seconds(block) if "forward_seconds" in block else "-"]
            if sdpa is not None:
                ratio = sdpa["forward_seconds"] / flash["forward_seconds"]
                runs = [_forward_runs(sdpa), _forward_runs(flash)]
                cells += [_seconds(sdpa), _ratio(ratio, *runs), _met(ratio, ATTENTION_BAR)]
            else:
                cells += ["-", "-", "-"]
            build = r.get("machine", {}).get("cpu_flash", {}).get("tag", "-")
            lines.append(f"| {label} | {date} | `{build}` | {heads} | {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
