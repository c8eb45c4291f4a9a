"""The decoder's GEMMs on CPU: XLA:CPU under each set of XLA flags vs torch, in one run.

  python -m experiments.bench_gemm --config configs/bench_gemm.py

Issue #20 asks whether the projections and MLP GEMMs reach torch's rate. Each flag setting
runs in its own process (XLA reads `XLA_FLAGS` once, at backend start); in it, every shape
`[M, K] @ [K, N]` (float32) is timed `repeats` times for the jitted XLA dot and for torch's
`@` (MKL, `threads` threads), interleaved so both see the same machine state, and checked
equal. Reported: median GFLOP/s of each and their ratio, per setting and shape; the machine
record names the CPU. Writes `<workdir>/bench_gemm.json`.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import ml_collections
import numpy as np

from longctx_jax.atomic import write_atomically
from longctx_jax.bench import machine


def time_shapes(shapes: list[tuple[int, int, int]], repeats: int, threads: int) -> list[dict]:
    """Rows {shape, xla_gflops, torch_gflops, ratio} for each `(M, K, N)`, timed in this process."""
    import jax
    import jax.numpy as jnp
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for M, K, N in shapes:
        a = rng.standard_normal((M, K), np.float32)
        b = rng.standard_normal((K, N), np.float32)
        dot = jax.jit(jnp.matmul)
        xa, xb = jnp.asarray(a), jnp.asarray(b)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        ours = np.asarray(dot(xa, xb).block_until_ready())
        theirs = (ta @ tb).numpy()
        err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        if err > 1e-4:
            raise AssertionError(f"XLA and torch disagree on {M}x{K}x{N}: max relative error {err:.1e}")
        xla_s, torch_s = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            dot(xa, xb).block_until_ready()
            xla_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            ta @ tb  # noqa: B018  (the timed product)
            torch_s.append(time.perf_counter() - start)
        flops = 2 * M * K * N
        x, t = statistics.median(xla_s), statistics.median(torch_s)
        rows.append(dict(shape=[M, K, N], xla_s=x, torch_s=t, xla_gflops=flops / x / 1e9,
                         torch_gflops=flops / t / 1e9, xla_over_torch=t / x, max_rel_err=err))
    return rows


def run(cfg: ml_collections.ConfigDict) -> dict:
    """Times every flag setting of `cfg.settings` in its own process; writes the JSON."""
    shapes = [tuple(int(x) for x in s) for s in cfg.shapes]
    result = dict(machine=machine.machine(), repeats=cfg.repeats, threads=cfg.threads, settings=[])
    for name, flags in cfg.settings.items():
        env = dict(os.environ, XLA_FLAGS=flags)
        args = json.dumps(dict(shapes=shapes, repeats=cfg.repeats, threads=cfg.threads))
        out = subprocess.run([sys.executable, "-m", "longctx_jax.bench.gemm", args], env=env,
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"setting {name!r} (XLA_FLAGS={flags!r}) failed:\n{out.stderr[-2000:]}")
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        result["settings"].append(dict(name=name, xla_flags=flags, rows=rows))
        print(f"{name:>12}: " + "  ".join(f"{'x'.join(map(str, r['shape']))} {r['xla_over_torch']:.2f}x"
                                          for r in rows), flush=True)
    os.makedirs(cfg.workdir, exist_ok=True)
    path = os.path.join(cfg.workdir, "bench_gemm.json")
    write_atomically(path, json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return result


def table(result: dict) -> str:
    """Markdown: one row per flag setting and shape."""
    cpu = result["machine"]["cpu"]
    lines = [f"{cpu['model']}, {cpu['cores']} cores; torch {result['threads']} threads; median of "
             f"{result['repeats']} interleaved runs.", "",
             "| XLA flags | M x K x N | XLA GFLOP/s | torch GFLOP/s | XLA / torch |",
             "| --- | --- | --- | --- | --- |"]
    for setting in result["settings"]:
        flags = f"`{setting['xla_flags']}`" if setting["xla_flags"] else "(default)"
        for r in setting["rows"]:
            lines.append(f"| {flags} | {' x '.join(map(str, r['shape']))} | {r['xla_gflops']:.0f} | "
                         f"{r['torch_gflops']:.0f} | {r['xla_over_torch']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # one setting's child process: argv[1] is the JSON of its arguments
    spec = json.loads(sys.argv[1])
    print(json.dumps(time_shapes([tuple(s) for s in spec["shapes"]], spec["repeats"], spec["threads"])))
