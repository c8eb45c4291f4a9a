"""`ModelConfig`: the validated, hashable description of a decoder.

Built from `config.model` (an ml_collections ConfigDict) by `ModelConfig.from_config`, or
directly by the pretrained-model loaders. Hashable so that NNX graph definitions holding it
can key `jax.jit` caches.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from longctx_jax.attention.dispatch import available
from longctx_jax.attention.patterns.choice import Pattern, build_pattern
from longctx_jax.attention.spec import AttentionSpec
from longctx_jax.models.cpu_blas import IMPLS as MATMUL_IMPLS
from longctx_jax.positional.rope_types import resolve_rope_scaling

POSITION_SCHEMES = ("rope", "alibi", "none")
DTYPES = ("float32", "bfloat16", "float16")
# `jax.checkpoint_policies` that take no arguments: what the remat of each block may keep.
REMAT_POLICIES = ("nothing_saveable", "everything_saveable", "dots_saveable", "checkpoint_dots",
                  "dots_with_no_batch_dims_saveable", "checkpoint_dots_with_no_batch_dims")


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                        for p in value):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and options of a Llama-style decoder (RMSNorm, SwiGLU, GQA)."""

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    mlp_dim: int
    head_dim: int | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    position: str = "rope"
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None
    rope_interleaved: bool = False
    qkv_bias: bool = False
    attention_impl: str = "auto"
    matmul_impl: str = "auto"  # the projections' GEMMs: "auto", "xla", "cpu_blas" (models/cpu_blas.py)
    attention_pattern: str = "full"
    attention_options: tuple | None = None
    window: int | None = None
    sinks: int = 0
    logit_soft_cap: float | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    init_std: float = 0.02
    remat: bool = False
    remat_policy: str = "nothing_saveable"

    def __post_init__(self):
        object.__setattr__(self, "rope_scaling", _freeze(self.rope_scaling) if self.rope_scaling else None)
        object.__setattr__(self, "attention_options",
                           _freeze(self.attention_options) if self.attention_options else None)
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise ValueError(
                    f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads}) "
                    "unless head_dim is given"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        sizes = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "mlp_dim", "head_dim")
        for name in sizes:
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads ({self.num_heads}) must be a multiple of model.num_kv_heads "
                f"({self.num_kv_heads})"
            )
        if self.position not in POSITION_SCHEMES:
            raise ValueError(f"unknown model.position {self.position!r}; valid: {POSITION_SCHEMES}")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.rope_scaling is not None and self.position != "rope":
            raise ValueError(f"model.rope_scaling is set but model.position is {self.position!r}, not 'rope'")
        if self.position == "rope":  # a bad rope_scaling fails here, not at the first forward pass
            resolve_rope_scaling(self.head_dim, self.rope_theta, self.rope_scaling_dict)
        if self.attention_impl not in available():
            raise ValueError(f"unknown model.attention.impl {self.attention_impl!r}; valid: {available()}")
        if self.matmul_impl not in MATMUL_IMPLS:
            raise ValueError(f"unknown model.matmul_impl {self.matmul_impl!r}; valid: {MATMUL_IMPLS}")
        pattern = self.pattern  # validates the pattern name and options
        positional = self.window is not None or self.sinks or self.logit_soft_cap is not None
        if pattern.attention is not None and (positional or self.position == "alibi"):
            raise ValueError(f"attention pattern {self.attention_pattern!r} takes no window, sinks, "
                             "logit_soft_cap or ALiBi")
        AttentionSpec(window=self.window, sinks=self.sinks, logit_soft_cap=self.logit_soft_cap)
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"unknown model.remat_policy {self.remat_policy!r}; valid: {REMAT_POLICIES}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"unknown model.{name} {getattr(self, name)!r}; valid: {DTYPES}")

    @property
    def pattern(self) -> Pattern:
        """The configured attention pattern (`attention.patterns.choice`)."""
        options = _thaw(self.attention_options) if self.attention_options else None
        return build_pattern(self.attention_pattern, options, num_heads=self.num_heads)

    @property
    def rope_scaling_dict(self) -> dict | None:
        """The Hugging Face `rope_scaling` mapping, or None."""
        return _thaw(self.rope_scaling) if self.rope_scaling else None

    def as_dict(self) -> dict[str, Any]:
        """Every field, `rope_scaling` and `attention_options` as mappings (JSON-serializable)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["rope_scaling"] = self.rope_scaling_dict
        fields["attention_options"] = _thaw(self.attention_options) if self.attention_options else None
        return fields

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (e.g. a new `rope_scaling` for extension)."""
        if "rope_scaling" in changes and isinstance(changes["rope_scaling"], Mapping):
            changes["rope_scaling"] = dict(changes["rope_scaling"])
        return ModelConfig(**{**self.as_dict(), **changes})

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any]) -> "ModelConfig":
        """From `config.model`; the nested `attention` block maps to the attention fields."""
        values = dict(model_cfg)
        attention = dict(values.pop("attention", {}) or {})
        for key, field in (("impl", "attention_impl"), ("pattern", "attention_pattern"),
                           ("pattern_options", "attention_options")):
            if key in attention:
                values[field] = attention.pop(key)
        values.update(attention)
        if values.get("attention_options") is not None:
            values["attention_options"] = dict(values["attention_options"])
        if values.get("rope_scaling") is not None:
            values["rope_scaling"] = dict(values["rope_scaling"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config fields {unknown}; valid: {sorted(known)}")
        return cls(**values)
