"""bench_forward's decode timing: runs continue one cache, and each run is followed by a read floor
(torch summing the step's bytes) that the decode-bandwidth table sets each run against."""

from flax import nnx

from longctx_jax.bench import bandwidth, forward
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder


def test_decode_runs_each_get_a_read_floor_and_the_table_shows_them(monkeypatch):
    monkeypatch.setattr(bandwidth, "PAUSE_S", 0.0)
    cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    need = bandwidth.decode_bytes(cfg, 40)["total"]
    row = forward.bench_decode(model, context=40, steps=3, repeats=2, floor_bytes=need)
    assert row["context"] == 40 and row["steps"] == 3 and len(row["runs"]) == 2
    floor = row["read_floor"]
    assert floor["bytes"] == need and len(floor["runs_s"]) == 2 and floor["gbs"] > 0
    assert [len(reads) for reads in floor["reads_s"]] == [forward.FLOOR_READS] * 2
    step_s = [run["wall_s"] / 3 for run in row["runs"]]
    assert floor["step_over_floor"] == [s / f for s, f in zip(step_s, floor["runs_s"], strict=True)]
    assert "read_floor" not in forward.bench_decode(model, context=40, steps=2, repeats=1)  # no floor asked

    measured = {"read": {"torch": {"gbs": 10.0, "runs_gbs": [10.0]}}, "size_mib": 64, "repeats": 1,
                "smollm2_decode": {"context": 40,
                                   "bytes": {"parameters": need - 1, "cache": 1, "total": need}}}
    older = {k: v for k, v in row.items() if k != "read_floor"}
    table = bandwidth.decode_table({"T": measured}, [("T", "2026-01-01 `old`", {"decode": older}),
                                                     ("T", "2026-01-02 `new`", {"decode": row})])
    new_row = next(line for line in table.splitlines() if "`new`" in line)
    ratios = ", ".join(f"{x:.2f}" for x in floor["step_over_floor"])
    assert f"| {floor['gbs']:.1f} |" in new_row and f"({ratios}) |" in new_row
    assert next(line for line in table.splitlines() if "`old`" in line).endswith("| - | - |")
