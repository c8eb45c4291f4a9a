"""Reads the RoPE settings of a Hugging Face config.json, old and new spellings.

Released configs spell RoPE three ways:
  * top-level `rope_theta` plus a `rope_scaling` dict keyed by `type` (transformers < 4.42)
    or `rope_type` (Llama 3.1, Qwen2.5, Phi-3, DeepSeek-V3);
  * a `rope_parameters` dict that also carries `rope_theta` (transformers >= 5), possibly
    one dict per attention layer type (Gemma 3: `full_attention` / `sliding_attention`);
  * partial rotary as `partial_rotary_factor` (top level or inside the dict), `rotary_pct`
    (GPT-NeoX) or `rotary_dim` (GPT-J).
`rope_config_from_hf` turns any of them into the (theta, rope_scaling) pair that
`rope_frequencies(head_dim, theta, rope_scaling, seq_len=T)` takes, as transformers reads them:
  * both `rope_scaling` and `rope_parameters` present: a non-empty `rope_scaling` wins and
    `rope_parameters` is ignored (transformers 4.x never reads `rope_parameters`; 5.x's
    `convert_rope_params_to_dict` sets `rope_parameters = rope_scaling or rope_parameters`);
  * theta: `rope_theta` inside the chosen dict, else the top-level `rope_theta` (else
    GPT-NeoX's `rotary_emb_base`, else 10000);
  * the pretrained length, for the types whose table entry says it may be filled
    (`RopeType.fills_original_length`): `original_max_position_embeddings` from the dict,
    else the top-level one (Phi-3), else `max_position_embeddings`. For LongRoPE with a
    top-level `original_max_position_embeddings` the factor is max_position_embeddings over
    it (transformers' Phi-3 rule), which sets the default attention factor.
The partial rotary factor (from any spelling) must lie in (0, 1] and the mapping is validated
against the RoPE-type table (`rope_types.resolve_rope_scaling`) before anything is returned.
"""

import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

from longctx_jax.positional.rope_types import canonical_rope_type, check_rope_scaling


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
    """The partial rotary factor from the first spelling present, refused unless in (0, 1]."""
    sources = (("rope parameters' partial_rotary_factor", params.pop("partial_rotary_factor", None)),
               ("partial_rotary_factor", hf_config.get("partial_rotary_factor")),
               ("rotary_pct", hf_config.get("rotary_pct")))
    for key, value in sources:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value <= 1.0:
            raise ValueError(
                f"config {key} must be a number in (0, 1] (the rotated share of head_dim), got {value!r}"
            )
        return float(value)
    rotary_dim, head_dim = hf_config.get("rotary_dim"), _head_dim(hf_config)
    if rotary_dim is not None:
        if head_dim is None:
            raise ValueError("config has rotary_dim but neither head_dim nor hidden_size/num_attention_heads")
        valid = isinstance(rotary_dim, numbers.Integral) and not isinstance(rotary_dim, bool)
        if not valid or not 0 < rotary_dim <= head_dim:
            raise ValueError(
                f"config rotary_dim must be an integer in [1, head_dim = {head_dim}], got {rotary_dim!r}"
            )
        return int(rotary_dim) / head_dim
    return 1.0


def _select_parameters(hf_config: Mapping[str, Any], layer_type: str | None) -> dict[str, Any]:
    """The RoPE dict transformers reads: a non-empty `rope_scaling` over `rope_parameters`."""
    params = hf_config.get("rope_scaling") or hf_config.get("rope_parameters")
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
      where the type's table entry lets the config supply it, and `partial_rotary_factor`
      when below one. It is validated against the RoPE-type table (per-band list lengths
      too when the head dim is known).

    Raises:
      ValueError: malformed or unsupported settings, naming the value and what is valid.
    """
    params = _select_parameters(hf_config, layer_type)
    theta = params.pop("rope_theta", None)
    if theta is None:
        theta = hf_config.get("rope_theta")
    if theta is None:
        theta = hf_config.get("rotary_emb_base", 10000.0)
    partial = _partial_factor(hf_config, params)
    rope_type = canonical_rope_type(params)
    params.pop("type", None)
    params["rope_type"] = rope_type.name

    max_pos = hf_config.get("max_position_embeddings")
    top_original = hf_config.get("original_max_position_embeddings")
    if rope_type.fills_original_length and params.get("original_max_position_embeddings") is None:
        params["original_max_position_embeddings"] = top_original or max_pos
    if rope_type.factor_from_lengths and max_pos and params.get("original_max_position_embeddings"):
        if top_original or params.get("factor") is None:
            params["factor"] = max_pos / params["original_max_position_embeddings"]
    if partial != 1.0:
        params["partial_rotary_factor"] = partial

    rope_scaling = None if rope_type.name == "default" and partial == 1.0 else params
    check_rope_scaling(theta, rope_scaling, head_dim=_head_dim(hf_config))
    return RopeConfig(float(theta), rope_scaling, partial)
