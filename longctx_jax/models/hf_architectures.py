"""The Hugging Face architectures the decoder loads and exports: one table, one row per `model_type`.

    arch = architecture(config["model_type"])    # ValueError naming the valid types
    cfg = hf_config(config)                       # ModelConfig, validated before any weight is read
    weights = arch.split(weights, cfg)            # fused tensors (Phi-3) -> Llama names
    weights = arch.fuse(weights, cfg)             # Llama names -> this architecture's (export)

All four are the Llama block (RMSNorm, SwiGLU, grouped-query attention, rotate-half RoPE); a row
says only how each differs (`markdown_table()`, quoted in docs/huggingface.md): q/k/v biases,
the sliding window (Qwen2: on layers i >= `max_window_layers` when `use_sliding_window`; a saved
`layer_types` list wins), the RoPE types transformers' class takes (`HF_ROPE_TYPES` for all but
Phi-3; the project's static "ntk" is not one of them), partial rotary (Phi-3 only), fused tensors
(Phi-3: `qkv_proj` rows [q; k; v], `gate_up_proj` rows [gate; up]).

Phi-3's `rope_scaling` type `longrope` (alias "su") is LongRoPE (Ding et al. 2024): per-band
`short_factor` up to `original_max_position_embeddings` (top level in Phi-3 configs) and
`long_factor` beyond, cos/sin times sqrt(1 + ln s / ln L) with s = max_position_embeddings / L;
the math is the RoPE-type table's (`positional/rope_types.py`). Anything a row cannot take
(an unknown `model_type`, another activation, a RoPE type outside the row, Qwen2 windows on
only some layers, Llama's `mlp_bias`) raises ValueError naming the value and what is valid,
before any weight is read.
"""

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from longctx_jax.models.config import ModelConfig
from longctx_jax.positional.rope import rope_config_from_hf
from longctx_jax.positional.rope_types import ROPE_TYPES, canonical_rope_type

Weights = dict[str, np.ndarray]


def _no_window(config: Mapping[str, Any]) -> int | None:
    return None


def _global_window(config: Mapping[str, Any]) -> int | None:
    return config.get("sliding_window") or None


def _qwen2_window(config: Mapping[str, Any]) -> int | None:
    """Qwen2 slides on layers i >= max_window_layers, only when use_sliding_window (transformers'
    `layer_types`); a window on every layer or on none is what the decoder can run."""
    layers = config["num_hidden_layers"]
    window = config.get("sliding_window") if config.get("use_sliding_window", False) else None
    layer_types = config.get("layer_types")
    if layer_types is None:
        first = config.get("max_window_layers", layers)
        layer_types = ["sliding_attention" if window and i >= first else "full_attention"
                       for i in range(layers)]
    kinds = set(layer_types)
    if kinds - {"sliding_attention", "full_attention"}:
        raise ValueError(f"Qwen2 layer_types {sorted(kinds)}; valid: 'sliding_attention', 'full_attention'")
    if len(kinds) > 1:
        sliding = layer_types.count("sliding_attention")
        raise ValueError(f"Qwen2 sliding windows on only some layers ({sliding} of {layers}: "
                         f"max_window_layers={config.get('max_window_layers')}) are not supported; "
                         "valid: every layer (max_window_layers=0) or none")
    return window if kinds == {"sliding_attention"} else None


def _llama_qkv_bias(config: Mapping[str, Any]) -> bool:
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key, False):
            raise ValueError(f"Llama {key}=True is not supported (the decoder has no o_proj / MLP biases); "
                             "valid: False")
    return False


def _identity(weights: Weights, cfg: ModelConfig) -> Weights:
    return dict(weights)


def _phi3_split(weights: Weights, cfg: ModelConfig) -> Weights:
    """`qkv_proj` rows [q (N*H); k (K*H); v (K*H)] and `gate_up_proj` rows [gate (F); up (F)]."""
    q_rows, kv_rows, F = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.mlp_dim
    out = {}
    for name, value in weights.items():
        if name.endswith("self_attn.qkv_proj.weight"):
            if value.shape[0] != q_rows + 2 * kv_rows:
                raise ValueError(f"tensor {name!r} has {value.shape[0]} rows, config expects "
                                 f"{q_rows} + 2 * {kv_rows}")
            prefix = name[: -len("qkv_proj.weight")]
            out[prefix + "q_proj.weight"] = value[:q_rows]
            out[prefix + "k_proj.weight"] = value[q_rows:q_rows + kv_rows]
            out[prefix + "v_proj.weight"] = value[q_rows + kv_rows:]
        elif name.endswith("mlp.gate_up_proj.weight"):
            if value.shape[0] != 2 * F:
                raise ValueError(f"tensor {name!r} has {value.shape[0]} rows, config expects 2 * {F}")
            prefix = name[: -len("gate_up_proj.weight")]
            out[prefix + "gate_proj.weight"] = value[:F]
            out[prefix + "up_proj.weight"] = value[F:]
        else:
            out[name] = value
    return out


def _phi3_fuse(weights: Weights, cfg: ModelConfig) -> Weights:
    out = dict(weights)
    for i in range(cfg.num_layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        qkv = [out.pop(a + n) for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight")]
        out[a + "qkv_proj.weight"] = np.concatenate(qkv)
        out[m + "gate_up_proj.weight"] = np.concatenate([out.pop(m + "gate_proj.weight"),
                                                         out.pop(m + "up_proj.weight")])
    return out


def _llama_fields(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.window is not None:
        raise ValueError(f"architecture 'llama' has no sliding window (model window {cfg.window}); "
                         "valid: mistral, qwen2, phi3")
    return {"attention_bias": False, "mlp_bias": False}


def _windowed_fields(cfg: ModelConfig) -> dict[str, Any]:
    return {"sliding_window": cfg.window}


def _qwen2_fields(cfg: ModelConfig) -> dict[str, Any]:
    return {"use_sliding_window": cfg.window is not None, "sliding_window": cfg.window,
            "max_window_layers": 0 if cfg.window is not None else cfg.num_layers}


@dataclasses.dataclass(frozen=True)
class HFArchitecture:
    """One row of the architecture table.

    Attributes:
      model_type: config.json's `model_type`.
      class_name: the transformers class written to config.json's `architectures`.
      rope_types: canonical RoPE types the architecture takes (transformers' own check).
      qkv_bias: config.json -> whether q/k/v carry biases (raises on biases the decoder lacks).
      window: config.json -> the sliding window of every layer, or None.
      split: weights under this architecture's names -> Llama names (fused tensors split).
      fuse: the inverse, for export.
      export_fields: ModelConfig -> the architecture's own config.json fields (window, biases).
      partial_rotary: transformers' class rotates only `partial_rotary_factor` of each head.
      notes: (q/k/v bias, sliding window, fused tensors) in words, for `markdown_table`.
    """

    model_type: str
    class_name: str
    rope_types: tuple[str, ...]
    qkv_bias: Callable[[Mapping[str, Any]], bool]
    window: Callable[[Mapping[str, Any]], int | None]
    split: Callable[[Weights, ModelConfig], Weights] = _identity
    fuse: Callable[[Weights, ModelConfig], Weights] = _identity
    export_fields: Callable[[ModelConfig], dict[str, Any]] = _windowed_fields
    partial_rotary: bool = False
    notes: tuple[str, str, str] = ("no", "none", "none")

    def check_rope(self, rope_scaling: Mapping[str, Any] | None) -> None:
        """Raises ValueError when this architecture cannot take `rope_scaling` (its type, or a
        partial rotary factor), naming the value and the valid ones."""
        name = canonical_rope_type(rope_scaling).name
        if name not in self.rope_types:
            raise ValueError(f"architecture {self.model_type!r} cannot take rope_type {name!r}; "
                             f"valid: {self.rope_types}")
        partial = (rope_scaling or {}).get("partial_rotary_factor")
        if partial is not None and partial != 1.0 and not self.partial_rotary:
            raise ValueError(f"architecture {self.model_type!r} rotates whole heads; partial_rotary_factor "
                             f"{partial} is not supported (valid: 1.0; phi3 takes partial rotary)")


# The RoPE types of the project's table that transformers implements (its ROPE_INIT_FUNCTIONS).
HF_ROPE_TYPES = tuple(name for name in ROPE_TYPES if name != "ntk")
_TABLE = (
    HFArchitecture("llama", "LlamaForCausalLM", HF_ROPE_TYPES, _llama_qkv_bias, _no_window,
                   export_fields=_llama_fields,
                   notes=("no (`attention_bias` / `mlp_bias` refused)", "none", "none")),
    HFArchitecture("mistral", "MistralForCausalLM", HF_ROPE_TYPES, lambda c: False, _global_window,
                   notes=("no", "`sliding_window`, every layer", "none")),
    HFArchitecture("qwen2", "Qwen2ForCausalLM", HF_ROPE_TYPES, lambda c: True, _qwen2_window,
                   export_fields=_qwen2_fields,
                   notes=("always", "`sliding_window` on layers i >= `max_window_layers` when "
                          "`use_sliding_window` (all or none)", "none")),
    HFArchitecture("phi3", "Phi3ForCausalLM", ("default", "longrope"), lambda c: False, _global_window,
                   split=_phi3_split, fuse=_phi3_fuse, partial_rotary=True,
                   notes=("no", "`sliding_window`, every layer",
                          "`qkv_proj` = [q; k; v], `gate_up_proj` = [gate; up]")),
)
HF_ARCHITECTURES: Mapping[str, HFArchitecture] = MappingProxyType({a.model_type: a for a in _TABLE})
HF_MODEL_TYPES = tuple(HF_ARCHITECTURES)


def markdown_table() -> str:
    """The table as Markdown, one row per architecture (docs/huggingface.md quotes it; a test compares)."""
    rows = ["| model_type | q/k/v bias | sliding window | RoPE types | partial rotary | fused tensors |",
            "|---|---|---|---|---|---|"]
    for a in HF_ARCHITECTURES.values():
        bias, window, fused = a.notes
        rope, partial = ", ".join(a.rope_types), "yes" if a.partial_rotary else "no"
        rows.append(f"| `{a.model_type}` | {bias} | {window} | {rope} | {partial} | {fused} |")
    return "\n".join(rows)


def architecture(model_type: Any) -> HFArchitecture:
    """The table row of `model_type`.

    Raises:
      ValueError: an unknown type, naming the valid ones.
    """
    if model_type not in HF_ARCHITECTURES:
        raise ValueError(f"unsupported model_type {model_type!r}; valid: {HF_MODEL_TYPES}")
    return HF_ARCHITECTURES[model_type]


def complete_rope_scaling(rope_scaling: Mapping[str, Any] | None, trained_length: int | None) -> dict | None:
    """A load-time `rope_scaling` override, with `original_max_position_embeddings` defaulting to
    the checkpoint's trained context for the types whose table entry lets a reader fill it
    (`RopeType.fills_original_length`: dynamic, YaRN, LongRoPE scale from it)."""
    if rope_scaling is None:
        return None
    scaling = dict(rope_scaling)
    if trained_length and canonical_rope_type(scaling).fills_original_length:
        scaling.setdefault("original_max_position_embeddings", int(trained_length))
    return scaling


def hf_config(config: Mapping[str, Any], *, rope_scaling: Mapping[str, Any] | None = None,
              dtype: str = "float32") -> ModelConfig:
    """`ModelConfig` from a Hugging Face `config.json` dictionary of a table architecture.

    Args:
      config: the parsed config.json.
      rope_scaling: HF `rope_scaling` mapping replacing the checkpoint's (its
        `original_max_position_embeddings` defaults to the checkpoint's; for Phi-3 the
        top-level `original_max_position_embeddings`, its pretrained length).
      dtype: activation dtype.

    Raises:
      ValueError: unknown `model_type`, unsupported activation, window layout, biases or RoPE
        type (each named, with what is valid).
    """
    arch = architecture(config.get("model_type"))
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {config['hidden_act']!r}; valid: 'silu'")
    theta, scaling, _ = rope_config_from_hf(config)
    if rope_scaling is not None:
        trained = config.get("original_max_position_embeddings") or config.get("max_position_embeddings")
        scaling = complete_rope_scaling(rope_scaling, trained)
    arch.check_rope(scaling)
    num_heads = config["num_attention_heads"]
    return ModelConfig(
        vocab_size=config["vocab_size"],
        d_model=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=config.get("num_key_value_heads") or num_heads,
        mlp_dim=config["intermediate_size"],
        head_dim=config.get("head_dim") or config["hidden_size"] // num_heads,
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        position="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=arch.qkv_bias(config),
        window=arch.window(config),
        dtype=dtype,
    )


__all__ = ["HF_ARCHITECTURES", "HF_MODEL_TYPES", "HF_ROPE_TYPES", "HFArchitecture", "architecture",
           "complete_rope_scaling", "hf_config", "markdown_table"]
