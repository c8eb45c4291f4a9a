"""The decode-attention bench runs end to end (every reader, outputs equal to dense), refuses bad
configs before work, and its docs table sets cpu_decode against the floor measured beside it."""

import pytest

from longctx_jax import config_cli
from longctx_jax.bench import decode_attention


def _small(tmp_path):
    cfg = config_cli.load_config("configs/bench_decode_attention.py")
    cfg.workdir = str(tmp_path)
    cfg.layers, cfg.rounds, cfg.pause_s = 2, 2, 0.01
    cfg.cases = ((300, 300), (100, 700))  # full; mostly empty slots (chunks past the written part)
    return cfg


def test_runs_every_reader_and_equals_dense(tmp_path):
    result = decode_attention.run(_small(tmp_path))
    assert [(c["filled"], c["capacity"]) for c in result["cases"]] == [(300, 300), (100, 700)]
    for case in result["cases"]:
        readers = case["readers"]
        assert set(readers) == {"cpu_decode", "dense", "torch_sdpa", "read_floor"}
        assert case["written_bytes"] == 2 * 2 * case["filled"] * 3 * 64 * 4
        for name, entry in readers.items():
            assert len(entry["runs_ms"]) == 2 and entry["ms"] > 0 and entry["gbs"] > 0, name
        assert readers["cpu_decode"]["max_abs_diff_vs_dense"] < 1e-5
        assert readers["torch_sdpa"]["max_abs_diff_vs_dense"] < 1e-5
    assert (tmp_path / "bench_decode_attention.json").exists()
    table = decode_attention.table([("TEST", "2026-01-01 `x`", result)])
    assert table.count("| TEST | 2026-01-01 `x` |") == 2 and "| 100 / 700 |" in table
    assert "2 layers of 9 / 3 heads x 64" in table
    ours, floor = (result["cases"][0]["readers"][name] for name in ("cpu_decode", "read_floor"))
    per_round = [a / b for a, b in zip(ours["runs_ms"], floor["runs_ms"], strict=True)]
    assert f"| {ours['ms'] / floor['ms']:.2f} ({min(per_round):.2f}-{max(per_round):.2f}) |" in table


@pytest.mark.parametrize("field, value, message", [
    ("cases", ((10, 5),), "filled"),
    ("impls", ("flash",), "impls"),
    ("kv_heads", 2, "multiple"),
    ("rounds", 0, "rounds"),
    ("pause_s", -1.0, "pause_s"),
])
def test_bad_config_is_refused_before_work(tmp_path, field, value, message):
    cfg = _small(tmp_path)
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=message):
        decode_attention.run(cfg)
    assert not (tmp_path / "bench_decode_attention.json").exists()
