"""Time and memory of attention implementations, written to `<workdir>/bench_attention.json`.

  python -m experiments.bench_attention --config configs/bench_attention.py:quick

CPU: for each length, forward time (median of `repeats`, once from `long_from` tokens on,
compilation excluded; wall and process CPU seconds, the latter steadier on a shared host) and the
compiled program's memory (`memory_analysis()`: arguments + outputs + temporaries, the
peak XLA plans for) of every implementation in `config.cpu.impls`, plus the process's
peak RSS after each case (blockwise runs first, so its RSS is not inflated by the dense
cases). "dense" and "xla" materialise `[B, N, T, S]` float32 logits, so they are skipped
(with the reason in the JSON) where those alone would exceed `max_quadratic_gib`; "blockwise"
and "cpu_flash" (the fused C++ kernel) never do. When torch is installed (the `bench` extra),
PyTorch's fused CPU `scaled_dot_product_attention` is timed on the same shapes in the same
run (`torch_sdpa` rows; causal only, it has no sliding window without a dense mask).
GPU (when present): forward and forward+backward TFLOP/s, counting 4 H flops per allowed
(query, key) pair forward and 2.5x that backward (FlashAttention's convention).
"""

import functools
import json
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from longctx_jax.attention import dispatch
from longctx_jax.attention.masks import AttentionMask
from longctx_jax.bench import machine
from longctx_jax.provenance import provenance

GIB = 2**30
MEMORY_EFFICIENT = ("blockwise", "cpu_flash")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _allowed_pairs(n: int, causal: bool, window: int | None) -> int:
    """Exact number of allowed (query, key) pairs for an n x n AttentionMask."""
    AttentionMask(causal, window)
    i = np.arange(n)
    lo = np.zeros(n) if window is None else np.maximum(0, i - window + 1)
    hi = i + 1 if causal else (np.full(n, n) if window is None else np.minimum(n, i + window))
    return int(np.sum(hi - lo))


def _time(fn, args, repeats: int, warmup: bool = True) -> tuple[float, float, list[float]]:
    """Median wall seconds, median process CPU seconds (all threads) and every run's wall seconds."""
    if warmup:
        jax.block_until_ready(fn(*args))
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), wall


def _inputs(batch, n, heads, kv_heads, head_dim, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    shapes = [(batch, n, heads, head_dim), (batch, n, kv_heads, head_dim), (batch, n, kv_heads, head_dim)]
    return [jax.random.normal(key, shape, dtype) for key, shape in zip(keys, shapes, strict=True)]


def cpu_section(cfg: ml_collections.ConfigDict, lengths: tuple[int, ...], repeats: int) -> list[dict]:
    """One row per (implementation, length) of `config.cpu`: compiled memory, forward seconds, RSS."""
    rows = []
    for impl in cfg.impls:
        for n in lengths:
            row = dict(impl=impl, seq_len=n, batch=cfg.batch, heads=cfg.heads, kv_heads=cfg.kv_heads,
                       head_dim=cfg.head_dim, dtype=cfg.dtype, causal=cfg.causal, window=cfg.window)
            logits_gib = cfg.batch * cfg.heads * n * n * 4 / GIB
            if impl not in MEMORY_EFFICIENT and logits_gib > cfg.max_quadratic_gib:
                row["skipped"] = (
                    f"materialises [B, N, T, S] float32 logits = {logits_gib:.1f} GiB "
                    f"(> max_quadratic_gib={cfg.max_quadratic_gib}) on a CPU host"
                )
                rows.append(row)
                print(row, flush=True)
                continue
            kwargs = dict(causal=cfg.causal, window=cfg.window)
            if impl == "blockwise":
                kwargs.update(block_q=cfg.block_q, block_k=cfg.block_k)
            fn = jax.jit(functools.partial(dispatch.attend, impl=impl, **kwargs))
            args = _inputs(cfg.batch, n, cfg.heads, cfg.kv_heads, cfg.head_dim, jnp.dtype(cfg.dtype))
            start = time.perf_counter()
            compiled = fn.lower(*args).compile()
            row["compile_seconds"] = time.perf_counter() - start
            mem = compiled.memory_analysis()
            row["compiled_temp_bytes"] = int(mem.temp_size_in_bytes)
            row["compiled_total_bytes"] = int(
                mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
            )
            if n > cfg.time_max_len:
                row["not_timed"] = f"seq_len > time_max_len={cfg.time_max_len}; compiled memory only"
            else:  # already compiled: no warm-up call; long sequences are timed once
                row["forward_seconds"], row["forward_cpu_seconds"], row["forward_runs_s"] = _time(
                    compiled, args, repeats if n < cfg.long_from else 1, warmup=False
                )
            row["peak_rss_bytes_so_far"] = _peak_rss_bytes()
            row["compiled_total_gib"] = row["compiled_total_bytes"] / GIB
            rows.append(row)
            print({k: v for k, v in row.items() if k not in ("batch", "dtype")}, flush=True)
            del args, compiled
    return rows


def torch_sdpa_section(cfg: ml_collections.ConfigDict, lengths: tuple[int, ...],
                       repeats: int) -> list[dict] | None:
    """PyTorch's fused CPU sdpa on the CPU section's shapes; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for n in lengths:
        row = dict(impl="torch_sdpa", seq_len=n, torch=torch.__version__, threads=torch.get_num_threads())
        if cfg.window is not None or n > cfg.time_max_len:
            row["skipped"] = ("sliding window needs a dense mask in sdpa" if cfg.window is not None
                              else "seq_len > time_max_len")
            rows.append(row)
            continue
        args = [torch.from_numpy(np.asarray(x)).transpose(1, 2).contiguous()  # sdpa takes [B, N, T, H]
                for x in _inputs(cfg.batch, n, cfg.heads, cfg.kv_heads, cfg.head_dim, jnp.dtype(cfg.dtype))]

        def sdpa(q, k, v):
            with torch.inference_mode():
                return torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=cfg.causal, enable_gqa=cfg.heads != cfg.kv_heads
                )

        times = _time(sdpa, args, repeats if n < cfg.long_from else 1)
        row["forward_seconds"], row["forward_cpu_seconds"], row["forward_runs_s"] = times
        rows.append(row)
        print(row, flush=True)
    return rows


def gpu_section(cfg: ml_collections.ConfigDict) -> list[dict]:
    """One row per (implementation, head dim, mask, length) of `config.gpu`: seconds and TFLOP/s."""
    rows = []
    dtype = jnp.dtype(cfg.dtype)
    for head_dim in cfg.head_dims:
        for window in (None, cfg.window):
            for n in cfg.lengths:
                args = _inputs(cfg.batch, n, cfg.heads, cfg.heads, head_dim, dtype)
                pairs = _allowed_pairs(n, True, window) * cfg.batch * cfg.heads
                fwd_flops = 4.0 * pairs * head_dim
                for impl in cfg.impls:
                    row = dict(impl=impl, seq_len=n, head_dim=head_dim, window=window, dtype=cfg.dtype)
                    kwargs = dict(causal=True, window=window)

                    def fwd(q, k, v, impl=impl, kwargs=kwargs):
                        return dispatch.attend(q, k, v, impl=impl, **kwargs)

                    def fwd_bwd(q, k, v, fwd=fwd):
                        return jax.grad(lambda *a: jnp.sum(fwd(*a).astype(jnp.float32)), argnums=(0, 1, 2))(
                            q, k, v
                        )

                    try:
                        t_fwd, _, _ = _time(jax.jit(fwd), args, cfg.repeats)
                        t_all, _, _ = _time(jax.jit(fwd_bwd), args, cfg.repeats)
                    except Exception as error:  # noqa: BLE001 - a backend may not support a case
                        row["skipped"] = f"{type(error).__name__}: {str(error)[:300]}"
                    else:
                        row.update(
                            forward_seconds=t_fwd, forward_tflops=fwd_flops / t_fwd / 1e12,
                            fwd_bwd_seconds=t_all, fwd_bwd_tflops=3.5 * fwd_flops / t_all / 1e12,
                        )
                    rows.append(row)
                    print(row, flush=True)
    return rows


def run(config: ml_collections.ConfigDict) -> dict:
    """Times every implementation at every length (CPU; GPU when present) and writes the JSON.

    Args:
      config: a `configs/bench_attention.py` config.

    Returns:
      The result written to `<config.workdir>/bench_attention.json`.
    """
    lengths = tuple(config.lengths)
    repeats = config.cpu.repeats
    if not lengths or min(lengths) <= 0 or repeats <= 0:
        raise ValueError(f"lengths must be non-empty and positive and cpu.repeats positive, got {lengths}, "
                         f"{repeats}")
    result = {
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "machine": machine.machine(), **provenance(),
        "jax_version": jax.__version__,
        "preset": config.preset,
        "config": config.to_dict(),
    }
    if jax.default_backend() == "gpu":
        result["gpu"] = gpu_section(config.gpu)
    cpu_cfg = config.cpu
    with jax.default_device(jax.devices("cpu")[0]):
        result["cpu"] = cpu_section(cpu_cfg, lengths, repeats)
    if cpu_cfg.torch_peer:
        result["cpu_torch_sdpa"] = torch_sdpa_section(cpu_cfg, lengths, repeats)
    os.makedirs(config.workdir, exist_ok=True)
    path = os.path.join(config.workdir, "bench_attention.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=str)
    print(f"wrote {path}")
    return result
