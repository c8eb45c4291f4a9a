"""KV-cache memory: bytes for a given length, and the longest cache that fits a budget.

    bytes = 2 (keys and values) * layers * kv_heads * head_dim * length * batch * itemsize

Grouped-query attention stores only the K key/value heads, which is why Llama-3-8B (8 KV
heads) needs a quarter of Llama-2-7B's (32) cache per token. `python -m
longctx_jax.models.memory` prints the table in docs/kv_cache.md as JSON.
"""

import dataclasses
import json

_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "float8_e4m3fn": 1}


@dataclasses.dataclass(frozen=True)
class CacheShape:
    """What the cache size depends on: layers, KV heads and head dim."""

    num_layers: int
    num_kv_heads: int
    head_dim: int


# Published architectures (from each model's config.json).
KNOWN_SHAPES = {
    "Llama-2-7B": CacheShape(num_layers=32, num_kv_heads=32, head_dim=128),
    "Llama-3-8B": CacheShape(num_layers=32, num_kv_heads=8, head_dim=128),
    "Llama-3-70B": CacheShape(num_layers=80, num_kv_heads=8, head_dim=128),
    "SmolLM2-135M": CacheShape(num_layers=30, num_kv_heads=3, head_dim=64),
}


def itemsize(dtype: str) -> int:
    """Bytes per cached element."""
    if dtype not in _ITEMSIZE:
        raise ValueError(f"unknown cache dtype {dtype!r}; valid: {sorted(_ITEMSIZE)}")
    return _ITEMSIZE[dtype]


def kv_cache_bytes(shape: CacheShape, *, length: int, batch: int = 1, dtype: str = "bfloat16") -> int:
    """Bytes of keys and values for `batch` sequences of `length` tokens."""
    if length < 0 or batch < 1:
        raise ValueError(f"need length >= 0 and batch >= 1, got {length}, {batch}")
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * length * batch * itemsize(dtype)


def max_cache_length(shape: CacheShape, budget_bytes: int, *, batch: int = 1, dtype: str = "bfloat16") -> int:
    """The longest cache (tokens per sequence) whose keys and values fit in `budget_bytes`."""
    per_token = kv_cache_bytes(shape, length=1, batch=batch, dtype=dtype)
    return int(budget_bytes // per_token)


def format_bytes(n: int) -> str:
    """Binary units: 1.0 GiB, 360.0 MiB."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def table() -> list[dict]:
    """The rows of docs/kv_cache.md: known shapes at their documented lengths."""
    rows = []
    for name, length, dtype in (("Llama-2-7B", 4096, "float16"), ("Llama-3-8B", 8192, "bfloat16"),
                                ("Llama-3-8B", 131072, "bfloat16"), ("Llama-3-70B", 131072, "bfloat16"),
                                ("SmolLM2-135M", 8192, "float32"), ("SmolLM2-135M", 8192, "bfloat16")):
        shape = KNOWN_SHAPES[name]
        n = kv_cache_bytes(shape, length=length, dtype=dtype)
        rows.append(dict(model=name, length=length, dtype=dtype, bytes=n, human=format_bytes(n),
                         bytes_per_token=n // length,
                         max_length_in_80GiB=max_cache_length(shape, 80 * 2**30, dtype=dtype)))
    return rows


if __name__ == "__main__":
    print(json.dumps(table(), indent=1))
