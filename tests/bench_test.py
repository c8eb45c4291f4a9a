"""The benchmark package: refusals before work, causal-work counts, the RoPE wavelength figure."""

import jax
import pytest

from configs import bench_gpu, bench_ring, bench_train
from longctx_jax.bench import gpu, ring, train
from longctx_jax.eval.plots import plot_rope_wavelengths


@pytest.mark.parametrize("seq_len,num_devices", [(64, 4), (256, 8)])
@pytest.mark.parametrize("window", [None, 16])
def test_causal_work_counts_every_allowed_pair_once(seq_len, num_devices, window):
    # Reference: query i sees keys max(0, i - window + 1) .. i.
    want = sum(i + 1 if window is None else min(i + 1, window) for i in range(seq_len))
    work = ring.causal_work(seq_len, num_devices, window)
    for name in ("natural", "zigzag"):
        assert sum(work[name]["pairs"]) == want
        assert len(work[name]["pairs"]) == num_devices
    if window is None:  # contiguous shards are unbalanced under a causal mask, zig-zag is not
        assert work["natural"]["pairs_max_over_min"] > work["zigzag"]["pairs_max_over_min"]


@pytest.mark.parametrize("field,value", [("steps", 0), ("warmup", -1)])
def test_train_refuses_bad_step_counts_before_work(tmp_path, field, value):
    config = bench_train.get_config()
    config.workdir = str(tmp_path)
    config.bench[field] = value
    with pytest.raises(ValueError, match=rf"bench.warmup must be >= 0 and bench.steps > 0, got .*{value}"):
        train.run(config)
    assert not list(tmp_path.iterdir())


def test_ring_refuses_more_devices_than_jax_has(tmp_path):
    config = bench_ring.get_config("quick")
    config.workdir = str(tmp_path)
    config.num_devices = jax.device_count() + 1
    with pytest.raises(ValueError, match=f"num_devices={config.num_devices}"):
        ring.run(config)
    assert not list(tmp_path.iterdir())


def test_gpu_refuses_without_a_gpu(tmp_path):
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present")
    config = bench_gpu.get_config()
    config.workdir = str(tmp_path / "out")
    assert "needs a GPU" in gpu.gpu_missing()
    with pytest.raises(RuntimeError, match="needs a GPU"):
        gpu.run(config)
    assert not (tmp_path / "out").exists()


def test_rope_wavelength_figure(tmp_path):
    path = tmp_path / "rope.png"
    plot_rope_wavelengths(path, head_dim=64, length=1024, factor=4.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="head_dim=63"):
        plot_rope_wavelengths(path, head_dim=63)


def test_gpu_time_kernels_rows_on_cpu():
    """The timing loop's bookkeeping, run with XLA on a CPU (flash needs a GPU and is recorded as
    skipped): a window as long as the sequence is not timed again, XLA above its cap is not run,
    progress is reported after every row, and the targets read the rows."""
    config = bench_gpu.get_config()
    config.lengths, config.heads, config.kv_heads, config.head_dims = (64, 128), 2, 1, (16,)
    config.window, config.repeats, config.xla_max_length = 64, 2, 64
    seen = []
    rows = gpu.time_kernels(config, on_row=lambda r: seen.append(len(r)))
    keys = [(r["impl"], r["seq_len"], r["window"]) for r in rows]
    impls = config.impls
    assert keys == ([(i, 64, None) for i in impls] + [(i, 128, None) for i in impls]
                    + [(i, 128, 64) for i in impls])
    assert seen == list(range(1, len(rows) + 1))
    by_key = dict(zip(keys, rows, strict=True))
    timed = by_key[("xla", 64, None)]
    assert timed["forward_seconds"] > 0 and timed["fwd_bwd_seconds"] > 0 and timed["calls_per_sample"] >= 1
    lo, hi = timed["forward_p10_p90"]
    assert lo <= timed["forward_seconds"] <= hi
    assert "xla_max_length" in by_key[("xla", 128, None)]["skipped"]
    assert "forward_seconds" not in by_key[("flash", 64, None)]  # no GPU: recorded with its error
    assert gpu._targets(rows, config)["target_0.8x_met"] is None


def test_gpu_table_states_a_failed_check_and_computes_the_targets():
    config = bench_gpu.get_config().to_dict()
    check = [dict(case="causal", head_dim=64, max_abs_out_error=0.5, max_abs_grad_error=0.01, ok=False)]
    failed = {"device": "GPU X", "jax_version": "0", "config": config, "check": check,
              "error": "flash disagrees with dense; not timed"}
    text = gpu.table(failed)
    assert "0 of 1 cases within tolerance" in text and "failed: causal H=64" in text
    assert "Not timed: flash disagrees with dense" in text
    row = dict(seq_len=8192, head_dim=128, window=None, dtype="bfloat16", forward_tflops=1.0,
               fwd_bwd_tflops=1.0)
    timings = [dict(row, impl="flash", forward_seconds=2.0, fwd_bwd_seconds=8.0),
               dict(row, impl="cudnn", forward_seconds=1.0, fwd_bwd_seconds=2.0)]
    ok = dict(failed, check=[dict(check[0], ok=True, max_abs_out_error=0.01)], timings=timings)
    del ok["error"]
    ok["targets"] = gpu._targets(timings, bench_gpu.get_config())
    text = gpu.table(ok)
    assert "| 128 | causal | 8,192 |" in text and "2.00x / 4.00x" in text
    assert "0.50x (target >= 0.8x: **not met**)" in text and "(target >= 3.5x: **not measured**)" in text
