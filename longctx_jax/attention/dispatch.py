"""Chooses an attention implementation by name.

Every implementation takes the keyword arguments of `longctx_jax.attention.dense.attention`
(see docs/architecture.md). `attend(q, k, v, impl=name, **kwargs)` is the only call the
models make, so the choice is a config value (`config.model.attention.impl`).
"""

from collections.abc import Callable

from longctx_jax.attention import dense
from longctx_jax.typing import Array

AttentionFn = Callable[..., Array]

IMPLEMENTATIONS: dict[str, AttentionFn] = {"dense": dense.attention}


def attend(q: Array, k: Array, v: Array, *, impl: str = "dense", **kwargs) -> Array:
    """Runs the attention implementation called `impl` on `[B, T, N, H]` / `[B, S, K, H]`."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention impl {impl!r}; valid: {sorted(IMPLEMENTATIONS)}")
    return IMPLEMENTATIONS[impl](q, k, v, **kwargs)
