"""Writes a `Decoder` as a Hugging Face model directory that transformers loads to the same logits.

    export_hf(model, tokenizer, "out/", architecture="llama")
    # out/config.json, out/model.safetensors, out/tokenizer.json + tokenizer_config.json
    AutoModelForCausalLM.from_pretrained("out/")     # or load_hf("out/")

The inverse of `llama.decoder_params` then of the architecture row's `split`
(`hf_architectures.HF_ARCHITECTURES`): decoder parameters -> Llama-named HF-layout float32 tensors
(`[out_features, in_features]`) -> the architecture's names (Phi-3 fuses `qkv_proj` and
`gate_up_proj`). config.json carries the model's current RoPE in both spellings transformers
reads (`rope_scaling` for 4.x, `rope_parameters` with `rope_theta` for 5.x) and
`max_position_embeddings`: the length the scaling extends to (original length x factor) unless
given, except for `dynamic`, whose pretrained length transformers reads from it, and `longrope`,
where it must be that product (transformers may derive the factor from it). Phi-3 LongRoPE
also gets its top-level `original_max_position_embeddings`, from which transformers (and
`rope_config_from_hf`) take the factor. Weights are written with safetensors
(no pickle); the tokenizer, when given, as its `tokenizers` JSON (the byte-level BPE rebuilt from
a GGUF included), with a BOS post-processor when the checkpoint adds BOS.

A config the HF schema cannot express (ALiBi or NoPE, interleaved RoPE, attention sinks, a
logit soft-cap, a sparse attention pattern, a window, RoPE type or partial rotary the
architecture lacks, e.g. the project's static "ntk", which transformers does not implement) or a
model with parameters beyond the plain decoder's (LoRA adapters not merged) raises ValueError
naming it before anything is written.
"""

import glob
import json
import os
from typing import Any

import numpy as np
from flax import nnx
from safetensors.numpy import save as safetensors_bytes
from tokenizers import processors

from longctx_jax.atomic import write_atomically
from longctx_jax.models import hf_architectures
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.hf_architectures import HFArchitecture
from longctx_jax.models.tokenizer import PretrainedTokenizer
from longctx_jax.positional.rope_types import canonical_rope_type

__all__ = ["DEFAULT_SHARD_BYTES", "export_hf", "hf_config_dict", "hf_named_weights"]

DEFAULT_SHARD_BYTES = 4 << 30  # transformers' own default max_shard_size is 5 GB
_INDEX = "model.safetensors.index.json"


def _path_name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def hf_named_weights(model: Decoder) -> dict[str, np.ndarray]:
    """The decoder's parameters as float32 HF Llama-named tensors in HF layout.

    Layouts: embed `[V, D]`; lm_head `[V, D]` (decoder `[D, V]`); q/k/v_proj `[N*H or K*H, D]`
    (decoder `[D, N, H]`); o_proj `[D, N*H]` (decoder `[N, H, D]`); biases `[N*H]`; gate/up
    `[F, D]`, down `[D, F]` (decoder transposed); norms `[D]`.

    Raises:
      ValueError: the model has parameters the plain decoder lacks (e.g. unmerged LoRA), or lacks some.
    """
    cfg = model.cfg
    flat = {tuple(path): np.asarray(v.get_value(), np.float32)
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    D, N, K, H = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    out = {"model.embed_tokens.weight": flat.pop(("embed",)),
           "model.norm.weight": flat.pop(("final_norm", "scale"))}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = flat.pop(("lm_head",)).T
    for i in range(cfg.num_layers):
        p, a, m = f"model.layers.{i}.", ("layers", i, "attn"), ("layers", i, "mlp")
        out[p + "input_layernorm.weight"] = flat.pop(("layers", i, "attn_norm", "scale"))
        out[p + "post_attention_layernorm.weight"] = flat.pop(("layers", i, "mlp_norm", "scale"))
        out[p + "self_attn.q_proj.weight"] = flat.pop(a + ("wq",)).reshape(D, N * H).T
        out[p + "self_attn.k_proj.weight"] = flat.pop(a + ("wk",)).reshape(D, K * H).T
        out[p + "self_attn.v_proj.weight"] = flat.pop(a + ("wv",)).reshape(D, K * H).T
        out[p + "self_attn.o_proj.weight"] = flat.pop(a + ("wo",)).reshape(N * H, D).T
        if cfg.qkv_bias:
            out[p + "self_attn.q_proj.bias"] = flat.pop(a + ("bq",)).reshape(N * H)
            out[p + "self_attn.k_proj.bias"] = flat.pop(a + ("bk",)).reshape(K * H)
            out[p + "self_attn.v_proj.bias"] = flat.pop(a + ("bv",)).reshape(K * H)
        out[p + "mlp.gate_proj.weight"] = flat.pop(m + ("w_gate",)).T
        out[p + "mlp.up_proj.weight"] = flat.pop(m + ("w_up",)).T
        out[p + "mlp.down_proj.weight"] = flat.pop(m + ("w_down",)).T
    if flat:
        raise ValueError(f"model parameters {sorted(map(_path_name, flat))[:5]} have no Hugging Face "
                         "tensor (merge LoRA adapters into a plain Decoder before exporting)")
    return {name: np.ascontiguousarray(value) for name, value in out.items()}


def _check_expressible(cfg: ModelConfig, arch: HFArchitecture) -> None:
    unsupported = {
        "position": (cfg.position, "rope"),
        "rope_interleaved": (cfg.rope_interleaved, False),
        "attention_pattern": (cfg.attention_pattern, "full"),
        "sinks": (cfg.sinks, 0),
        "logit_soft_cap": (cfg.logit_soft_cap, None),
    }
    for name, (value, valid) in unsupported.items():
        if value != valid:
            raise ValueError(f"model.{name}={value!r} has no Hugging Face {arch.model_type!r} equivalent; "
                             f"valid: {valid!r}")
    arch.check_rope(cfg.rope_scaling_dict)


def _max_positions(cfg: ModelConfig, given: int | None) -> int:
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given <= 0):
        raise ValueError(f"max_position_embeddings must be a positive integer, got {given!r}")
    scaling = cfg.rope_scaling_dict or {}
    length, factor = scaling.get("original_max_position_embeddings"), scaling.get("factor")
    if canonical_rope_type(scaling).name == "dynamic":  # transformers' dynamic NTK reads L from it
        if given is not None and given != length:
            raise ValueError(f"rope_type 'dynamic': max_position_embeddings must equal "
                             f"original_max_position_embeddings ({length}), the length transformers "
                             f"scales from; got {given}")
        return length
    if canonical_rope_type(scaling).name == "longrope":  # transformers may take s = max_positions / L
        derived = int(round(length * (factor or 1.0)))
        if given is not None and given != derived:
            raise ValueError(f"rope_type 'longrope': max_position_embeddings must be "
                             f"original_max_position_embeddings x factor = {derived} (transformers derives "
                             f"the attention factor from it); got {given}")
        return derived
    if given is not None:
        return given
    if length and factor:
        return int(round(length * factor))
    raise ValueError(f"max_position_embeddings cannot be derived from rope_scaling {scaling or None!r} "
                     "(it needs original_max_position_embeddings and factor); pass it explicitly")


def hf_config_dict(cfg: ModelConfig, *, architecture_name: str, max_position_embeddings: int | None = None,
                   tokenizer: PretrainedTokenizer | None = None) -> dict[str, Any]:
    """The config.json of `cfg` as a transformers `architecture_name` model.

    Raises:
      ValueError: a setting the architecture cannot express, or an underivable
        `max_position_embeddings` (see the module docstring).
    """
    arch = hf_architectures.architecture(architecture_name)
    _check_expressible(cfg, arch)
    max_pos = _max_positions(cfg, max_position_embeddings)
    scaling = cfg.rope_scaling_dict
    config = {
        "architectures": [arch.class_name],
        "model_type": arch.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": max_pos,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling,
        "rope_parameters": {**(scaling or {"rope_type": "default"}), "rope_theta": cfg.rope_theta},
        "torch_dtype": "float32",
        "use_cache": True,
        **arch.export_fields(cfg),
    }
    if arch.model_type == "phi3":  # transformers' Phi-3 reads L at the top level, over the dict's
        rope_type = canonical_rope_type(scaling)
        config["original_max_position_embeddings"] = (
            scaling["original_max_position_embeddings"] if rope_type.needs_original_length else max_pos)
    for name in ("bos", "eos", "pad"):  # written even when unknown: some classes default to ids past V
        value = None if tokenizer is None else getattr(tokenizer, f"{name}_id")
        config[f"{name}_token_id"] = None if value is None else int(value)
    return config


def _write_tokenizer(tokenizer: PretrainedTokenizer, directory: str, max_positions: int,
                     chat_template: str | None) -> None:
    tok = tokenizer.tokenizer.from_str(tokenizer.tokenizer.to_str())  # a copy to add the BOS rule to
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        bos = tokenizer.token(tokenizer.bos_id)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_id)])
    write_atomically(os.path.join(directory, "tokenizer.json"), tok.to_str())
    tok_config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                                  "model_max_length": max_positions, "add_bos_token": tokenizer.add_bos,
                                  "clean_up_tokenization_spaces": False}
    for name in ("bos", "eos", "pad"):
        value = getattr(tokenizer, f"{name}_id")
        if value is not None:
            tok_config[f"{name}_token"] = tokenizer.token(value)
    if chat_template:
        tok_config["chat_template"] = chat_template
    write_atomically(os.path.join(directory, "tokenizer_config.json"), json.dumps(tok_config, indent=2))


def _write_weights(weights: dict[str, np.ndarray], directory: str, max_shard_bytes: int) -> list[str]:
    """`model.safetensors`, or shards of at most `max_shard_bytes` (a tensor larger than that
    alone) with transformers' index file; removes weight files of an earlier export there."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, value in weights.items():
        if shards[-1] and size + value.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    if len(shards) == 1:
        files = ["model.safetensors"]
    else:
        files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for fname, shard in zip(files, shards, strict=True):
        write_atomically(os.path.join(directory, fname), safetensors_bytes(shard, metadata={"format": "pt"}))
    written = set(files)
    if len(shards) > 1:
        weight_map = {name: fname for fname, shard in zip(files, shards, strict=True) for name in shard}
        index = {"metadata": {"total_size": int(sum(v.nbytes for v in weights.values()))},
                 "weight_map": weight_map}
        write_atomically(os.path.join(directory, _INDEX), json.dumps(index, indent=2))
        written.add(_INDEX)
    earlier = glob.glob(os.path.join(directory, "model*.safetensors")) + [os.path.join(directory, _INDEX)]
    for path in filter(os.path.exists, earlier):
        if os.path.basename(path) not in written:
            os.remove(path)
    return sorted(written)


def export_hf(model: Decoder, tokenizer: PretrainedTokenizer | None, directory: str | os.PathLike, *,
              architecture: str = "llama", max_position_embeddings: int | None = None,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES, chat_template: str | None = None) -> str:
    """Writes `model` (and `tokenizer`) as a Hugging Face model directory.

    Args:
      model: a plain `Decoder` (LoRA merged); its config's `rope_scaling` is what is written.
      tokenizer: written as tokenizer.json + tokenizer_config.json; None writes none.
      directory: created if absent; existing files of the same names are replaced.
      architecture: the `model_type` to write ("llama", "mistral", "qwen2", "phi3").
      max_position_embeddings: the context length to declare; default original length x factor
        of the model's rope_scaling (required when the scaling has neither). For `dynamic` it is
        the original length, from which transformers' dynamic NTK scales.
      max_shard_bytes: above this many bytes of float32 weights the safetensors are sharded
        (`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`), which bounds the
        memory of writing a large model to one shard.
      chat_template: a Jinja chat template for tokenizer_config.json (e.g. a GGUF's
        `tokenizer.chat_template`); written only with a tokenizer.

    Returns:
      The directory path.

    Raises:
      ValueError: anything the architecture cannot express (module docstring), before writing.
    """
    arch = hf_architectures.architecture(architecture)
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be a positive integer, got {max_shard_bytes!r}")
    cfg = model.cfg
    config = hf_config_dict(cfg, architecture_name=arch.model_type,
                            max_position_embeddings=max_position_embeddings, tokenizer=tokenizer)
    weights = arch.fuse(hf_named_weights(model), cfg)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    _write_weights(weights, directory, max_shard_bytes)
    write_atomically(os.path.join(directory, "config.json"), json.dumps(config, indent=2))
    if tokenizer is not None:
        _write_tokenizer(tokenizer, directory, config["max_position_embeddings"], chat_template)
    return directory

