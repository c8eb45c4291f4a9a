"""The decoder's GEMMs on CPU: XLA:CPU under each set of XLA flags, and cpu_blas, vs torch, in one run.

  python -m experiments.bench_gemm --config configs/bench_gemm.py

Issue #20 asks whether the projections and MLP GEMMs reach torch's rate. Each flag setting
runs in its own process (XLA reads `XLA_FLAGS` once, at backend start); in it, every shape
`[M, K] @ [K, N]` (float32) is timed `repeats` times for the jitted XLA dot, for the jitted
`models.cpu_blas.matmul` (numpy's OpenBLAS through an FFI call: what the decoder's projections
run on one CPU device) and for torch's `@` (MKL, `threads` threads), interleaved so all see
the same machine state, and checked equal. Each timed call starts `settle_s` after the
last one ended: each library keeps its worker threads spinning for a while after a product,
and without the pause they compete with whichever library runs next (see docs/benchmarks.md
for a run without it). Reported: median and 10-90 % range of GFLOP/s of each and the ratios
of medians, per setting and shape; the record names the CPU, the time and the git commit.
Writes `<workdir>/bench_gemm.json`.
"""

import functools
import json
import os
import statistics
import subprocess
import sys
import time

import ml_collections
import numpy as np

from longctx_jax.atomic import write_atomically
from longctx_jax.bench import machine, speed_tables
from longctx_jax.provenance import provenance


def _spread(flops: int, seconds: list[float]) -> list[float]:
    """[10th, 90th] percentile of the GFLOP/s of `seconds`."""
    rates = flops / np.asarray(seconds) / 1e9
    return [float(np.percentile(rates, 10)), float(np.percentile(rates, 90))]


def time_shapes(shapes: list[tuple[int, int, int]], repeats: int, threads: int, settle_s: float = 0.0
                ) -> list[dict]:
    """Rows {shape, xla / blas / torch seconds and GFLOP/s, ratios} per `(M, K, N)`, timed here."""
    import jax
    import jax.numpy as jnp
    import torch

    from longctx_jax.models import cpu_blas

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for M, K, N in shapes:
        a = rng.standard_normal((M, K), np.float32)
        b = rng.standard_normal((K, N), np.float32)
        dot = jax.jit(jnp.matmul)
        blas = jax.jit(cpu_blas.matmul) if cpu_blas.available() else None
        xa, xb = jnp.asarray(a), jnp.asarray(b)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        theirs = (ta @ tb).numpy()
        err = 0.0
        for name, fn in (("XLA", dot), ("cpu_blas", blas)):
            if fn is not None:
                ours = np.asarray(fn(xa, xb).block_until_ready())
                err = max(err, float(np.abs(ours - theirs).max() / np.abs(theirs).max()))
                if err > 1e-4:
                    raise AssertionError(f"{name} and torch disagree on {M}x{K}x{N}: "
                                         f"max relative error {err:.1e}")
        timed = {"xla": functools.partial(dot, xa, xb)}  # the old order: XLA, cpu_blas, torch
        if blas is not None:
            timed["blas"] = functools.partial(blas, xa, xb)
        timed["torch"] = functools.partial(torch.matmul, ta, tb)
        seconds = {name: [] for name in timed}
        for _ in range(repeats):  # interleaved, each after a pause for the last one's threads to settle
            for name, call in timed.items():
                time.sleep(settle_s)
                start = time.perf_counter()
                jax.block_until_ready(call())  # torch's product is done on return
                seconds[name].append(time.perf_counter() - start)
        flops = 2 * M * K * N
        t = statistics.median(seconds["torch"])
        row = dict(shape=[M, K, N], max_rel_err=err)
        for name, runs in seconds.items():
            s_med = statistics.median(runs)
            row.update({f"{name}_s": s_med, f"{name}_gflops": flops / s_med / 1e9,
                        f"{name}_gflops_p10_p90": _spread(flops, runs)})
            if name != "torch":
                row[f"{name}_over_torch"] = t / s_med
        rows.append(row)
    return rows


def run(cfg: ml_collections.ConfigDict) -> dict:
    """Times every flag setting of `cfg.settings` in its own process; writes the JSON."""
    shapes = [tuple(int(x) for x in s) for s in cfg.shapes]
    result = dict(machine=machine.machine(), **provenance(), repeats=cfg.repeats, threads=cfg.threads,
                  settle_s=cfg.settle_s, settings=[])
    for name, flags in cfg.settings.items():
        env = dict(os.environ, XLA_FLAGS=flags)
        args = json.dumps(dict(shapes=shapes, repeats=cfg.repeats, threads=cfg.threads,
                               settle_s=cfg.settle_s))
        out = subprocess.run([sys.executable, "-m", "longctx_jax.bench.gemm", args], env=env,
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"setting {name!r} (XLA_FLAGS={flags!r}) failed:\n{out.stderr[-2000:]}")
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        result["settings"].append(dict(name=name, xla_flags=flags, rows=rows))
        print(f"{name:>12}: " + "  ".join(
            f"{'x'.join(map(str, r['shape']))} XLA {r['xla_over_torch']:.2f}x"
            + (f" cpu_blas {r['blas_over_torch']:.2f}x" if "blas_over_torch" in r else "")
            for r in rows), flush=True)
    os.makedirs(cfg.workdir, exist_ok=True)
    path = os.path.join(cfg.workdir, "bench_gemm.json")
    write_atomically(path, json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return result


def _rate(r: dict, key: str) -> str:
    if f"{key}_gflops" not in r:
        return "-"
    spread = r.get(f"{key}_gflops_p10_p90")
    return f"{r[f'{key}_gflops']:.0f}" + (f" ({spread[0]:.0f}-{spread[1]:.0f})" if spread else "")


def table(result: dict) -> str:
    """Markdown: one row per flag setting and shape; GFLOP/s as median (10th-90th percentile)."""
    when = (f", {result['measured_utc'][:10]}, commit {result['git_commit'][:10]}"
            if "git_commit" in result else "")
    settle = f", each {result['settle_s']:g} s after the last" if result.get("settle_s") else ""
    label = speed_tables.machine_label(result["machine"])
    lines = [f"{label}{when}; torch {result['threads']} threads; median "
             f"(10th-90th percentile) of {result['repeats']} interleaved runs{settle}.", "",
             "| XLA flags | M x K x N | XLA GFLOP/s | cpu_blas GFLOP/s | torch GFLOP/s | XLA / torch "
             "| cpu_blas / torch |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for setting in result["settings"]:
        flags = f"`{setting['xla_flags']}`" if setting["xla_flags"] else "(default)"
        for r in setting["rows"]:
            blas = f"{r['blas_over_torch']:.2f}" if "blas_over_torch" in r else "-"
            shape = " x ".join(map(str, r["shape"]))
            rates = " | ".join(_rate(r, key) for key in ("xla", "blas", "torch"))
            lines.append(f"| {flags} | {shape} | {rates} | {r['xla_over_torch']:.2f} | {blas} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # one setting's child process: argv[1] is the JSON of its arguments
    spec = json.loads(sys.argv[1])
    print(json.dumps(time_shapes([tuple(s) for s in spec["shapes"]], spec["repeats"], spec["threads"],
                                 spec["settle_s"])))
