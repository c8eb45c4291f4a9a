"""Flash attention on a GPU: checked against dense, then timed against cuDNN and XLA.

  python -m experiments.bench_gpu --config configs/bench_gpu.py --config.workdir=runs/bench_gpu

Writes `<workdir>/bench_gpu.json`: the device, the check results and one row per
(implementation, head dim, mask, length) with forward and forward+backward seconds and
TFLOP/s. FLOPs count 4 H per allowed (query, key) pair and head forward, 2.5x that
backward (FlashAttention's convention), so a window is credited only the pairs it computes.
Flash runs the Pallas Triton kernels (`interpret=False`, tiles from `kernels/gpu_plan.py`);
cuDNN and XLA are `jax.nn.dot_product_attention(implementation=...)` with `is_causal` and
`local_window_size`. A case an implementation cannot run is recorded with its error.
"""

import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from longctx_jax.atomic import write_atomically
from longctx_jax.attention import dense
from longctx_jax.attention.flash import flash_attention
from longctx_jax.bench import machine
from longctx_jax.positional.alibi import alibi_slopes
from longctx_jax.provenance import provenance


def _allowed_pairs(n: int, window: int | None) -> int:
    """Causal (query, key) pairs of an n x n mask, within `window` when given."""
    i = np.arange(n)
    lo = np.zeros(n) if window is None else np.maximum(0, i - window + 1)
    return int(np.sum(i + 1 - lo))


def _inputs(batch, n, heads, kv_heads, head_dim, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, n, heads, head_dim), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (batch, n, kv_heads, head_dim), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (batch, n, kv_heads, head_dim), jnp.float32).astype(dtype)
    d_out = jax.random.normal(keys[3], (batch, n, heads, head_dim), jnp.float32)
    return q, k, v, d_out


def _time(fn, args, repeats: int, min_sample_s: float = 0.02) -> dict:
    """Median seconds per call over `repeats` samples, with the 10-90 % spread.

    Each sample runs `inner` calls back to back and waits once, `inner` chosen from a warm call
    so that a sample lasts about `min_sample_s`: the host's dispatch and wait overlap the device
    work instead of being counted once per short kernel.
    """
    jax.block_until_ready(fn(*args))  # compile and warm up
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    inner = max(1, int(min_sample_s / max(time.perf_counter() - start, 1e-6)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = None
        for _ in range(inner):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / inner)
    lo, hi = np.percentile(times, [10, 90])
    return {"median": statistics.median(times), "p10": float(lo), "p90": float(hi), "inner": inner}


def check_kernels(cfg) -> list[dict]:
    """Flash forward and gradients vs the float32 dense oracle, every mask feature, H 64/128/256."""
    n, N, K = cfg.check_length, cfg.check_heads, cfg.check_kv_heads
    ids = jnp.asarray(np.repeat(np.arange(3), -(-n // 3))[:n][None])
    cases = {
        "causal": {},
        "window_sinks": dict(window=100, sinks=4),
        "alibi_softcap": dict(alibi_slopes=alibi_slopes(N), logit_soft_cap=30.0),
        "segments": dict(segment_ids=ids),
        "noncausal": dict(causal=False),
    }
    rows = []
    for head_dim in (64, 128, 256):
        q, k, v, d_out = _inputs(1, n, N, K, head_dim, jnp.dtype(cfg.dtype))
        for name, kwargs in cases.items():

            def value_and_grads(fn, *args, kwargs=kwargs):
                def loss(q, k, v):
                    out = fn(q, k, v, **kwargs)
                    return jnp.sum(out.astype(jnp.float32) * d_out), out

                return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(*args)

            (_, out), grads = value_and_grads(functools.partial(flash_attention, interpret=False), q, k, v)
            f32 = [x.astype(jnp.float32) for x in (q, k, v)]
            (_, want), want_grads = value_and_grads(dense.attention, *f32)
            out_err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - want)))
            grad_err = max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - w)))
                           for g, w in zip(grads, want_grads, strict=True))
            ok = out_err <= cfg.check_atol and grad_err <= cfg.check_grad_atol
            rows.append(dict(case=name, head_dim=head_dim, max_abs_out_error=out_err,
                             max_abs_grad_error=grad_err, ok=ok))
            print(rows[-1], flush=True)
    return rows


def _attention_fn(impl: str, window: int | None):
    if impl == "flash":
        return functools.partial(flash_attention, causal=True, window=window, interpret=False)
    local = None if window is None else (window - 1, 0)
    return functools.partial(jax.nn.dot_product_attention, is_causal=True, local_window_size=local,
                             implementation=impl)


def _time_case(impl: str, window: int | None, qkv: tuple, fwd_flops: float, repeats: int) -> dict:
    """Forward and forward+backward timings of one case, or {"skipped": the error} if `impl` fails."""
    fwd = _attention_fn(impl, window)

    def fwd_bwd(q, k, v):
        loss = lambda *a: jnp.sum(fwd(*a).astype(jnp.float32))  # noqa: E731
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    try:
        t_fwd = _time(jax.jit(fwd), qkv, repeats)
        t_all = _time(jax.jit(fwd_bwd), qkv, repeats)
    except Exception as error:  # noqa: BLE001 - an implementation may not take a case
        return {"skipped": f"{type(error).__name__}: {str(error)[:300]}"}
    return dict(forward_seconds=t_fwd["median"], forward_tflops=fwd_flops / t_fwd["median"] / 1e12,
                forward_p10_p90=[t_fwd["p10"], t_fwd["p90"]], fwd_bwd_seconds=t_all["median"],
                fwd_bwd_tflops=3.5 * fwd_flops / t_all["median"] / 1e12,
                fwd_bwd_p10_p90=[t_all["p10"], t_all["p90"]], calls_per_sample=t_fwd["inner"])


def time_kernels(cfg, on_row=None) -> list[dict]:
    """Forward and forward+backward seconds of every (head dim, mask, length, implementation).

    A window at least as long as the sequence is the causal case again and is not timed; XLA
    above `cfg.xla_max_length` is recorded as skipped without running (its dense scores alone
    are heads x n^2 elements). `on_row(rows)` is called after each row (to save progress).
    """
    rows = []
    dtype = jnp.dtype(cfg.dtype)
    for head_dim in cfg.head_dims:
        for window in (None, cfg.window):
            for n in cfg.lengths:
                if window is not None and window >= n:
                    continue
                q, k, v, _ = _inputs(cfg.batch, n, cfg.heads, cfg.kv_heads, head_dim, dtype)
                fwd_flops = 4.0 * _allowed_pairs(n, window) * cfg.batch * cfg.heads * head_dim
                for impl in cfg.impls:
                    row = dict(impl=impl, seq_len=n, head_dim=head_dim, window=window, dtype=cfg.dtype)
                    if impl == "xla" and n > cfg.xla_max_length:
                        row["skipped"] = f"not run: length {n} > config.xla_max_length {cfg.xla_max_length}"
                    else:
                        row.update(_time_case(impl, window, (q, k, v), fwd_flops, cfg.repeats))
                    rows.append(row)
                    print(row, flush=True)
                    if on_row is not None:
                        on_row(rows)
    return rows


def _targets(rows: list[dict], cfg) -> dict:
    """The issue's targets, computed from the timed rows (None where a row is missing)."""
    def seconds(impl, n, head_dim, window, key="forward_seconds"):
        for row in rows:
            if (row["impl"], row["seq_len"], row["head_dim"], row["window"]) == (impl, n, head_dim, window):
                return row.get(key)
        return None

    flash_8k, cudnn_8k = seconds("flash", 8192, 128, None), seconds("cudnn", 8192, 128, None)
    causal_32k, window_32k = seconds("flash", 32768, 128, None), seconds("flash", 32768, 128, cfg.window)
    ratio = None if None in (flash_8k, cudnn_8k) else cudnn_8k / flash_8k
    speedup = None if None in (causal_32k, window_32k) else causal_32k / window_32k
    return {
        "flash_vs_cudnn_causal_forward_8k_d128": ratio,
        "target_0.8x_met": None if ratio is None else ratio >= 0.8,
        "window_vs_causal_speedup_32k_d128": speedup,
        "target_3.5x_met": None if speedup is None else speedup >= 3.5,
    }


def gpu_missing() -> str | None:
    """Why this benchmark cannot run here (no GPU backend), or None when it can."""
    if jax.default_backend() == "gpu":
        return None
    return (f"bench_gpu needs a GPU; this JAX backend is {jax.default_backend()!r} "
            '(install with pip install -e ".[cuda13]")')


def run(config: ml_collections.ConfigDict) -> dict:
    """Checks flash against dense, then (if it agrees) times flash, cuDNN and XLA.

    Args:
      config: a `configs/bench_gpu.py` config.

    Returns:
      The result written to `<config.workdir>/bench_gpu.json`; it holds `"error"` (and no
      timings) when flash disagrees with the dense oracle.

    Raises:
      RuntimeError: when JAX has no GPU backend (before any work).
    """
    if (reason := gpu_missing()) is not None:
        raise RuntimeError(reason)
    result = {"device": jax.devices()[0].device_kind, "jax_version": jax.__version__,
              "machine": machine.machine(), **provenance(), "config": config.to_dict()}
    os.makedirs(config.workdir, exist_ok=True)
    path = os.path.join(config.workdir, "bench_gpu.json")

    def save() -> None:  # after every step: a run cut short keeps what it measured
        write_atomically(path, json.dumps(result, indent=2, default=str))

    result["check"] = check_kernels(config)
    save()
    if not all(row["ok"] for row in result["check"]):
        result["error"] = "flash disagrees with dense; not timed"
    else:
        def progress(rows):
            result["timings"] = rows
            save()

        result["timings"] = time_kernels(config, on_row=progress)
        result["targets"] = _targets(result["timings"], config)
    save()
    print(json.dumps(result.get("targets", result.get("error")), indent=2))
    print(f"wrote {path}")
    return result


def _ms(row: dict | None, key: str) -> str:
    if row is None:
        return "-"
    if "skipped" in row:
        return "not run" if row["skipped"].startswith("not run") else "failed"
    return f"{row[key + '_seconds'] * 1e3:.3f} ({row[key + '_tflops']:.0f})"


def table(result: dict) -> str:
    """Markdown of a committed `bench_gpu.json`: the check, the timings and the targets, computed."""
    check = result["check"]
    failed = [f"{c['case']} H={c['head_dim']}" for c in check if not c["ok"]]
    config = result["config"]
    dirty = ", uncommitted changes" if result.get("git_dirty") else ""
    lines = [
        f"{result['device']}, JAX {result['jax_version']}, measured {result.get('measured_utc', '?')} "
        f"(commit {result.get('git_commit', '?')[:7]}{dirty}).",
        "",
        f"Check before timing ({config['dtype']} inputs against the float32 dense oracle, T = "
        f"{config['check_length']}, {config['check_heads']} / {config['check_kv_heads']} heads): "
        f"{len(check) - len(failed)} of {len(check)} cases within tolerance "
        f"(max |error| forward {max(c['max_abs_out_error'] for c in check):.4f} <= {config['check_atol']}, "
        f"gradients {max(c['max_abs_grad_error'] for c in check):.4f} <= {config['check_grad_atol']})"
        + (f"; failed: {', '.join(failed)}." if failed else "."),
    ]
    if "timings" not in result:
        return "\n".join(lines + ["", f"Not timed: {result.get('error', 'no timings')}.", ""])
    rows = {(r["impl"], r["head_dim"], r["window"], r["seq_len"]): r for r in result["timings"]}
    impls = config["impls"]
    lines += ["", f"Milliseconds (TFLOP/s), median of {config['repeats']} samples; batch {config['batch']}, "
              f"{config['heads']} query / {config['kv_heads']} KV heads, {config['dtype']}. FLOPs count only "
              "the (query, key) pairs the mask allows.", "",
              "| head dim | mask | length | " + " | ".join(f"{i} forward" for i in impls) + " | "
              + " | ".join(f"{i} fwd+bwd" for i in impls) + " | cuDNN / flash speed, fwd / fwd+bwd |",
              "| --- | --- | --- |" + " --- |" * (2 * len(impls) + 1)]
    ratios = {"forward": [], "fwd_bwd": []}
    order = lambda k: (-k[0], k[1] is not None, k[1] or 0, k[2])  # noqa: E731 - D 128 first, causal first
    for head_dim, window, n in sorted({k[1:] for k in rows}, key=order):
        cells = [_ms(rows.get((i, head_dim, window, n)), "forward") for i in impls]
        cells += [_ms(rows.get((i, head_dim, window, n)), "fwd_bwd") for i in impls]
        flash, cudnn = rows.get(("flash", head_dim, window, n)), rows.get(("cudnn", head_dim, window, n))
        ratio = "-"
        if flash and cudnn and "skipped" not in flash and "skipped" not in cudnn:
            r = {k: flash[f"{k}_seconds"] / cudnn[f"{k}_seconds"] for k in ratios}
            for k in ratios:
                ratios[k].append(r[k])
            ratio = f"{r['forward']:.2f}x / {r['fwd_bwd']:.2f}x"
        mask = "causal" if window is None else f"causal, window {window}"
        lines.append(f"| {head_dim} | {mask} | {n:,} | " + " | ".join(cells) + f" | {ratio} |")
    targets = result["targets"]
    lines += [""]
    if ratios["forward"]:
        fwd, both = (f"{min(ratios[k]):.2f}-{max(ratios[k]):.2f}x" for k in ("forward", "fwd_bwd"))
        lines.append(f"cuDNN runs {fwd} the Triton flash kernel's speed forward and {both} forward+backward "
                     "over these cases.")
    for label, value, key, bar in (
            ("flash / cuDNN causal forward speed at 8K, D = 128", "flash_vs_cudnn_causal_forward_8k_d128",
             "target_0.8x_met", 0.8),
            ("4K window vs causal speed-up of flash at 32K, D = 128", "window_vs_causal_speedup_32k_d128",
             "target_3.5x_met", 3.5)):
        got = targets.get(value)
        met = {True: "met", False: "not met", None: "not measured"}[targets.get(key)]
        lines.append(f"- {label}: {'-' if got is None else f'{got:.2f}x'} (target >= {bar}x: **{met}**)")
    return "\n".join(lines) + "\n"
