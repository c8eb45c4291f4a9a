"""The speed tables apply issue #20's bars to the committed runs; the GEMM bench runs end to end."""

import json

from longctx_jax import config_cli
from longctx_jax.bench import gemm, speed_tables

MACHINE = {"cpu": {"model": "Test CPU", "cores": 2, "isa_flags": ["avx2", "fma", "avx512f"]},
           "cpu_flash": {"tag": "avx512_v16r24_q120k128"}}


def _forward(prefill_ratio, decode_ratio):
    row = {"length": 8192, "wall_s": 10.0, "tokens_per_s": 100.0 * prefill_ratio, "runs": [{"wall_s": 10.0}]}
    return {"machine": MACHINE, "prefill": [row], "decode_attention_resolved": "cpu_decode",
            "decode": {"context": 8192, "steps": 32, "wall_s": 1.0, "tokens_per_s": 5.0 * decode_ratio},
            "hf": {"transformers": "5", "torch": "2", "threads": 2, "hf_max_abs_logit_diff": 1e-4,
                   "parity_length": 8192, "prefill": [dict(row, tokens_per_s=100.0)],
                   "decode": {"context": 8192, "steps": 32, "wall_s": 1.0, "tokens_per_s": 5.0}}}


def test_forward_bars(tmp_path):
    for name, ratios in (("2026-01-01-test-fast", (1.2, 1.0)), ("2026-01-02-test-slow", (1.05, 0.9))):
        (tmp_path / f"{name}.json").write_text(json.dumps(_forward(*ratios)))
    rows = speed_tables.forward_table(speed_tables.runs(tmp_path)).splitlines()
    table = [r for r in rows if r.startswith("| TEST |")]
    fast, slow = [r for r in table if "`fast`" in r], [r for r in table if "`slow`" in r]
    assert all("| yes (bar" in r for r in fast) and len(fast) == 2
    assert all("| **no** (bar" in r for r in slow) and len(slow) == 2
    assert "Test CPU, 2 cores, AVX-512" in rows[-1] and "decode (cpu_decode; GEMMs: xla)" in "\n".join(rows)
    assert all("| prefill (GEMMs: xla) |" in r for r in table if "prefill" in r)  # no record: XLA's dots


def test_forward_rows_name_the_gemms_and_the_commit(tmp_path):
    result = dict(_forward(1.2, 1.0), prefill_matmul_blas=True, decode_matmul="cpu_blas few-row",
                  git_commit="0123456789abcdef", git_dirty=True)
    (tmp_path / "2026-01-01-test-blas.json").write_text(json.dumps(result))
    text = speed_tables.forward_table(speed_tables.runs(tmp_path))
    assert "| prefill (GEMMs: cpu_blas) |" in text and "commit 0123456789 (uncommitted changes)" in text
    assert "decode (cpu_decode; GEMMs: cpu_blas few-row)" in text
    result["decode"]["decode_layout"] = "transposed"
    (tmp_path / "2026-01-01-test-blas.json").write_text(json.dumps(result))
    text = speed_tables.forward_table(speed_tables.runs(tmp_path))
    assert "decode (cpu_decode; GEMMs: cpu_blas few-row, weights [out, in])" in text


def test_attention_bar(tmp_path):
    flash = {"impl": "cpu_flash", "seq_len": 8192, "heads": 9, "kv_heads": 3, "head_dim": 64,
             "forward_seconds": 0.8}
    result = {"machine": MACHINE, "config": {"lengths": [8192]}, "cpu": [flash],
              "cpu_torch_sdpa": [{"impl": "torch_sdpa", "seq_len": 8192, "forward_seconds": 0.6}]}
    (tmp_path / "2026-01-01-test-x.json").write_text(json.dumps(result))
    table = speed_tables.attention_table(speed_tables.runs(tmp_path))
    assert "| 0.600 | 0.75 | **no** (bar 1.0) |" in table and "| `avx512_v16r24_q120k128` |" in table


def test_gemm_bench_runs_each_setting_in_its_own_process(tmp_path):
    cfg = config_cli.load_config("configs/bench_gemm.py:smoke")
    cfg.workdir = str(tmp_path)
    result = gemm.run(cfg)
    (row,) = result["settings"][0]["rows"]
    assert row["shape"] == [64, 32, 48] and row["max_rel_err"] < 1e-4 and row["xla_gflops"] > 0
    assert row["blas_gflops"] > 0 and len(row["torch_gflops_p10_p90"]) == 2  # cpu_blas timed beside them
    assert result["git_commit"] and result["measured_utc"].endswith("+00:00")
    assert "| (default) | 64 x 32 x 48 |" in gemm.table(result)


def test_ratios_carry_their_range_over_every_pairing_of_runs(tmp_path):
    result = _forward(1.2, 1.0)
    ours, theirs = result["decode"], result["hf"]["decode"]
    ours.update(wall_s=1.0, runs=[{"wall_s": 0.9}, {"wall_s": 1.0}, {"wall_s": 1.1}])
    theirs.update(wall_s=2.0, tokens_per_s=ours["tokens_per_s"] / 2, runs=[{"wall_s": 1.8}, {"wall_s": 2.2}])
    (tmp_path / "2026-01-01-test-x.json").write_text(json.dumps(result))
    table = speed_tables.forward_table(speed_tables.runs(tmp_path))
    assert "| 2.00 (1.64-2.44) | yes (bar 1.0) |" in table  # 1.8 / 1.1 and 2.2 / 0.9
    assert "| 1.20 | yes (bar 1.1) |" in table  # one prefill run a side: no range
    flash = {"impl": "cpu_flash", "seq_len": 8192, "heads": 9, "kv_heads": 3, "head_dim": 64,
             "forward_seconds": 0.5, "forward_runs_s": [0.4, 0.5, 0.6]}
    sdpa = {"impl": "torch_sdpa", "seq_len": 8192, "forward_seconds": 0.6, "forward_runs_s": [0.6, 0.6]}
    (tmp_path / "2026-01-01-test-x.json").write_text(json.dumps(
        {"machine": MACHINE, "config": {"lengths": [8192]}, "cpu": [flash], "cpu_torch_sdpa": [sdpa]}))
    assert "| 1.20 (1.00-1.50) | yes (bar 1.0) |" in speed_tables.attention_table(speed_tables.runs(tmp_path))
