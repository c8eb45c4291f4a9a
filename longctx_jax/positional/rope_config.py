"""Reads the RoPE settings of a Hugging Face config.json, old and new spellings.

Released configs spell RoPE three ways:
  * top-level `rope_theta` plus a `rope_scaling` dict keyed by `type` (transformers < 4.42)
    or `rope_type` (Llama 3.1, Qwen2.5, Phi-3, DeepSeek-V3);
  * a `rope_parameters` dict that also carries `rope_theta` (transformers >= 5), possibly
    one dict per attention layer type (Gemma 3: `full_attention` / `sliding_attention`);
  * partial rotary as `partial_rotary_factor` (top level or inside the dict), `rotary_pct`
    (GPT-NeoX) or `rotary_dim` (GPT-J).
`rope_config_from_hf` turns any of them into the (theta, rope_scaling) pair that
`rope_frequencies(head_dim, theta, rope_scaling, seq_len=T)` takes, filling the pretrained
length the way transformers does: `original_max_position_embeddings` from the scaling dict,
else the top-level one (Phi-3), else `max_position_embeddings`. For LongRoPE with a
top-level `original_max_position_embeddings` the factor is max_position_embeddings over it
(transformers' Phi-3 rule), which sets the default attention factor.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

# Types whose frequencies depend on the pretrained length L.
_NEEDS_LENGTH = ("dynamic", "yarn", "longrope", "llama3")


class RopeConfig(NamedTuple):
    """RoPE settings of a model: pass `theta` and `rope_scaling` to `rope_frequencies`."""

    theta: float
    rope_scaling: dict[str, Any] | None  # canonical keys; carries partial_rotary_factor if < 1
    partial_rotary_factor: float


def _head_dim(hf_config: Mapping[str, Any]) -> int | None:
    if hf_config.get("head_dim"):
        return int(hf_config["head_dim"])
    if hf_config.get("hidden_size") and hf_config.get("num_attention_heads"):
        return int(hf_config["hidden_size"]) // int(hf_config["num_attention_heads"])
    return None


def _partial_factor(hf_config: Mapping[str, Any], params: dict[str, Any]) -> float:
    for value in (params.pop("partial_rotary_factor", None), hf_config.get("partial_rotary_factor"),
                  hf_config.get("rotary_pct")):
        if value is not None:
            return float(value)
    rotary_dim, head_dim = hf_config.get("rotary_dim"), _head_dim(hf_config)
    if rotary_dim is not None:
        if head_dim is None:
            raise ValueError("config has rotary_dim but neither head_dim nor hidden_size/num_attention_heads")
        return int(rotary_dim) / head_dim
    return 1.0


def _select_parameters(hf_config: Mapping[str, Any], layer_type: str | None) -> dict[str, Any]:
    params = hf_config.get("rope_parameters")
    if params is None:
        params = hf_config.get("rope_scaling")
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ValueError(f"rope_parameters / rope_scaling must be a mapping, got {params!r}")
    per_layer = params and all(isinstance(v, Mapping) for v in params.values())
    if per_layer:
        if layer_type not in params:
            raise ValueError(
                f"config has RoPE parameters per layer type {sorted(params)}; pass layer_type= one of them"
                f" (got {layer_type!r})"
            )
        params = params[layer_type]
    elif layer_type is not None:
        raise ValueError(
            f"layer_type={layer_type!r} given but the config's RoPE parameters are not per layer"
        )
    return dict(params)


def rope_config_from_hf(hf_config: Mapping[str, Any], *, layer_type: str | None = None) -> RopeConfig:
    """RoPE theta, canonical scaling mapping and partial rotary factor from a config.json dict.

    Args:
      hf_config: the parsed config.json (a plain mapping).
      layer_type: for per-layer-type `rope_parameters` (Gemma 3), which one to read.

    Returns:
      RopeConfig(theta, rope_scaling, partial_rotary_factor). rope_scaling is None for
      plain full-width RoPE; otherwise it has `rope_type` (legacy `type` and aliases such
      as Phi-3's "su" normalised), the config's fields, `original_max_position_embeddings`
      where the type needs it, and `partial_rotary_factor` when below one. It is validated
      by computing the frequencies once when the head dim is known.

    Raises:
      ValueError: malformed or unsupported settings (from `rope_frequencies`).
    """
    from longctx_jax.positional.rope import rope_frequencies, rope_type

    params = _select_parameters(hf_config, layer_type)
    theta = params.pop("rope_theta", None)
    if theta is None:
        theta = hf_config.get("rope_theta", hf_config.get("rotary_emb_base", 10000.0))
    partial = _partial_factor(hf_config, params)
    name = rope_type(params)
    params.pop("type", None)
    params["rope_type"] = name

    max_pos = hf_config.get("max_position_embeddings")
    top_original = hf_config.get("original_max_position_embeddings")
    if name in _NEEDS_LENGTH and params.get("original_max_position_embeddings") is None and name != "llama3":
        params["original_max_position_embeddings"] = top_original or max_pos
    if name == "longrope" and max_pos and params.get("original_max_position_embeddings"):
        if top_original or params.get("factor") is None:
            params["factor"] = max_pos / params["original_max_position_embeddings"]
    if partial != 1.0:
        params["partial_rotary_factor"] = partial

    rope_scaling = None if name == "default" and partial == 1.0 else params
    head_dim = _head_dim(hf_config)
    if head_dim is not None:
        rope_frequencies(head_dim, theta, rope_scaling)
    return RopeConfig(float(theta), rope_scaling, partial)
