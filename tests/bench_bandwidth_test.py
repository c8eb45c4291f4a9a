"""The decode floor's arithmetic equals a real decoder's bytes; the bandwidth bench runs end to end."""

import jax
import pytest
from flax import nnx

from longctx_jax import config_cli
from longctx_jax.bench import bandwidth
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.kv_cache import KVCache


@pytest.mark.parametrize("tie, bias", [(True, False), (False, True)])
def test_decode_bytes_are_the_parameters_and_the_cache(tie, bias):
    cfg = ModelConfig(vocab_size=50, d_model=24, num_layers=3, num_heads=4, num_kv_heads=2, mlp_dim=40,
                      tie_embeddings=tie, qkv_bias=bias)
    params = nnx.state(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    cache = KVCache.create(num_layers=3, batch=1, capacity=17, num_kv_heads=2, head_dim=cfg.head_dim,
                           dtype="float32")
    need = bandwidth.decode_bytes(cfg, 17)
    assert need["parameters"] == sum(x.nbytes for x in jax.tree.leaves(params))
    assert need["cache"] == sum(x.nbytes for x in (*cache.k, *cache.v))
    assert need["total"] == need["parameters"] + need["cache"]


def test_bench_runs_and_the_table_sets_decode_rows_against_it(tmp_path):
    cfg = config_cli.load_config("configs/bench_bandwidth.py:smoke")
    cfg.workdir = str(tmp_path)
    result = bandwidth.run(cfg)
    assert set(result["read"]) == {"xla", "numpy", "torch"}
    assert all(v["gbs"] > 0 for v in result["read"].values())
    assert result["smollm2_decode"]["bytes"]["parameters"] > 5e8  # SmolLM2-135M in float32
    best = max(v["gbs"] for v in result["read"].values())
    seconds = result["smollm2_decode"]["bytes"]["total"] / (best * 1e9) * 32 * 2  # half the floor's rate
    runs = [("TEST", "2026-01-01 `x`", {"decode": {"context": 8192, "steps": 32, "wall_s": seconds}}),
            ("OTHER", "2026-01-02 `y`", {"decode": {"context": 8192, "steps": 32, "wall_s": seconds}})]
    table = bandwidth.decode_table({"TEST": result}, runs)
    assert "| TEST | 2026-01-01 `x` |" in table and "| 50% |" in table
    assert table.startswith("TEST: read bandwidth")
    # Each row against its own machine: none measured for OTHER, so no share.
    assert "| OTHER | 2026-01-02 `y` |" in table and "| - | bandwidth not measured on OTHER |" in table
    with pytest.raises(ValueError, match="size_mib must be >= 64"):
        bandwidth.run(_with(cfg, size_mib=1))


def _with(cfg, **changes):
    cfg = cfg.copy_and_resolve_references()
    cfg.update(changes)
    return cfg
