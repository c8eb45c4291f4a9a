"""Per-device compiled memory of Llama-3.2-1B / Llama-3-8B train steps on 8, 64 and 256 devices.

  python -m experiments.bench_memory --config configs/bench_memory.py
  python -m experiments.bench_memory --config configs/bench_memory.py:table   # doc table only

Compiles (never runs) one AdamW train step per row from abstract shapes on fake CPU devices,
one subprocess per device count, writes `docs/results/memory/devices_<N>.json` and the table
in `docs/finetuning.md`. Shapes are the published Hugging Face configs (vocab 128256, GQA with 8
KV heads); float32 parameters and AdamW moments, bfloat16 compute, remat of every block, ring
attention over `sequence`. The batch is one sequence per data x fsdp group, so a device holds
seq_len / sequence tokens.
"""

import ml_collections

MODELS = {
    # meta-llama/Llama-3.2-1B config.json (tied embeddings).
    "llama_3_2_1b": {"vocab_size": 128256, "d_model": 2048, "num_layers": 16, "num_heads": 32,
                     "num_kv_heads": 8, "mlp_dim": 8192, "tie_embeddings": True, "rope_theta": 500000.0},
    # meta-llama/Meta-Llama-3-8B config.json.
    "llama_3_8b": {"vocab_size": 128256, "d_model": 4096, "num_layers": 32, "num_heads": 32,
                   "num_kv_heads": 8, "mlp_dim": 14336, "tie_embeddings": False, "rope_theta": 500000.0},
}

# (devices, seq_len) -> (data, fsdp, sequence): sequence shards of 8K tokens where the devices
# allow (16K on 8 devices at 128K), the rest fsdp; one 256-device row keeps a data axis of 4.
MESHES = {
    (8, 32768): (1, 2, 4), (8, 131072): (1, 1, 8),
    (64, 32768): (1, 16, 4), (64, 131072): (1, 4, 16),
    (256, 32768): (4, 16, 4), (256, 131072): (1, 16, 16),
}
VARIANTS = ("full", "table", "quick")


def get_config(variant: str = "full") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of configs/bench_memory.py; valid: {VARIANTS}")
    config = ml_collections.ConfigDict()
    config.workdir = "docs/results/memory"
    config.doc = "docs/finetuning.md"
    config.table_only = variant == "table"
    config.num_devices = ml_collections.config_dict.placeholder(int)  # None: one subprocess per count
    config.models = MODELS
    rows = [{"model": model, "devices": devices, "seq_len": seq_len,
             "data": mesh[0], "fsdp": mesh[1], "sequence": mesh[2]}
            for model in MODELS for (devices, seq_len), mesh in MESHES.items()]
    if variant == "quick":
        rows = [r for r in rows if r["devices"] == 8 and r["model"] == "llama_3_2_1b"]
    config.rows = tuple(rows)
    # Depths compiled: every byte count is extrapolated linearly from 1 and 2 layers to the
    # full depth (a full-depth 8B compile on 256 fake devices does not finish in minutes on a
    # shared 2-core CPU); `--config.layers_compiled=None` compiles every layer.
    config.layers_compiled = ml_collections.config_dict.placeholder(tuple)
    config.layers_compiled = (1, 2)
    config.optim = ml_collections.ConfigDict(
        {"learning_rate": 1e-5, "warmup_steps": 10, "weight_decay": 0.1, "grad_clip_norm": 1.0,
         "b1": 0.9, "b2": 0.95})
    return config
