"""Logit parity with transformers for every row of `hf_architectures`, and the export round trip.

Each test builds a tiny random model with transformers itself (seeded, float32, every parameter
perturbed so that norms and biases are not at their initial ones and zeros), saves it with
`save_pretrained`, loads it with `load_hf` and compares logits with the PyTorch forward (the
independent reference) to 1e-4. Sequences run past the sliding window (Mistral, Qwen2, Phi-3) and
past Phi-3's `original_max_position_embeddings` (so LongRoPE's long factors are exercised).
"""

import json
import os

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.models import llama
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.export import export_hf, hf_config_dict
from longctx_jax.models.hf_architectures import HF_MODEL_TYPES, hf_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V, D, LAYERS, N, K, F = 128, 64, 2, 4, 2, 96
HEAD = D // N
COMMON = dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=LAYERS,
              num_attention_heads=N, num_key_value_heads=K, rms_norm_eps=1e-5, rope_theta=1000.0,
              max_position_embeddings=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_rng = np.random.default_rng(7)
SHORT_FACTOR = [float(x) for x in 1.0 + _rng.random(HEAD // 2)]
LONG_FACTOR = [float(x) for x in 2.0 + 6.0 * _rng.random(HEAD // 2)]
PHI3_LONGROPE = dict(original_max_position_embeddings=16, max_position_embeddings=64,
                     rope_scaling={"rope_type": "longrope", "short_factor": SHORT_FACTOR,
                                   "long_factor": LONG_FACTOR})
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8}

# name -> (model_type, config overrides, sequence length). Each case compiles its own forward
# (~3 s on the shared CPU), so the variants one of the default cases already covers are `slow`.
CASES = {
    "llama": ("llama", {}, 24),
    "llama3_tied": ("llama", dict(rope_scaling=LLAMA3, tie_word_embeddings=True), 40),
    "mistral_window": ("mistral", dict(sliding_window=8), 30),
    "qwen2_window": ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=0), 30),
    "qwen2_full": ("qwen2", dict(use_sliding_window=False, sliding_window=8), 30),
    "phi3_longrope_short": ("phi3", PHI3_LONGROPE, 12),
    "phi3_longrope_long": ("phi3", {**PHI3_LONGROPE, "sliding_window": 24}, 40),
    "phi3_partial_rotary": ("phi3", dict(partial_rotary_factor=0.5), 20),
}
SLOW_CASES = ("llama", "qwen2_full", "phi3_longrope_short", "phi3_partial_rotary")


def cases(table: dict, slow: tuple[str, ...]) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if name in slow else name for name in table]


@nnx.jit
def forward(model, tokens_BT):
    return model(tokens_BT)
_CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
            "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "phi3": ("Phi3Config", "Phi3ForCausalLM")}


def save_tiny(directory, model_type: str, **overrides):
    """A seeded random transformers model of `model_type`, saved to `directory`; returns it."""
    config_cls, model_cls = (getattr(transformers, name) for name in _CLASSES[model_type])
    config = config_cls(**{**COMMON, **overrides}, attn_implementation="eager")
    torch.manual_seed(0)
    model = model_cls(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory, safe_serialization=True)
    return model


def hf_logits(model, tokens_BT: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens_BT, dtype=torch.long)).logits.numpy()


def tokens(length: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=(batch, length))


@pytest.mark.parametrize("case", cases(CASES, SLOW_CASES))
def test_load_hf_matches_transformers(tmp_path, case):
    model_type, overrides, length = CASES[case]
    reference = save_tiny(tmp_path, model_type, **overrides)
    model, tok = llama.load_hf(tmp_path)
    assert tok is None
    config = json.loads((tmp_path / "config.json").read_text())
    window = config.get("sliding_window") if model_type in ("mistral", "phi3") else None
    assert model.cfg.window == (8 if case == "qwen2_window" else window)
    ids = tokens(length)
    chex.assert_trees_all_close(np.asarray(forward(model, jnp.asarray(ids))), hf_logits(reference, ids),
                                atol=1e-4, rtol=0)


@pytest.mark.slow  # four compilations; the parity of "phi3_longrope_long" runs by default
def test_phi3_long_factor_is_used_beyond_the_original_length(tmp_path):
    """Past L = 16 positions the logits depend on long_factor, below it only on short_factor."""
    save_tiny(tmp_path, "phi3", **PHI3_LONGROPE)
    model, _ = llama.load_hf(tmp_path)
    other = dict(model.cfg.rope_scaling_dict, long_factor=[1.0] * (HEAD // 2))
    changed, _ = llama.load_hf(tmp_path, rope_scaling=other)
    short, long = tokens(16), tokens(17)
    chex.assert_trees_all_close(forward(model, jnp.asarray(short)), forward(changed, jnp.asarray(short)),
                                atol=1e-6)
    long_logits = [np.asarray(forward(m, jnp.asarray(long))) for m in (model, changed)]
    assert np.abs(long_logits[0] - long_logits[1]).max() > 1e-3


def test_config_errors_before_weights(tmp_path):
    """Bad configs fail on config.json alone (the directory holds no weights)."""
    base = dict(model_type="llama", vocab_size=V, hidden_size=D, intermediate_size=F,
                num_hidden_layers=LAYERS, num_attention_heads=N, num_key_value_heads=K,
                max_position_embeddings=32)

    def load(**changes):
        (tmp_path / "config.json").write_text(json.dumps({**base, **changes}))
        return llama.load_hf(tmp_path)

    with pytest.raises(ValueError, match=r"unsupported model_type 'gpt_neox'; valid: \('llama', 'mistral'"):
        load(model_type="gpt_neox")
    phi3_valid = r"'phi3' cannot take rope_type 'yarn'; valid: \('default', 'longrope'\)"
    with pytest.raises(ValueError, match=phi3_valid):
        load(model_type="phi3", rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="'phi3' cannot take rope_type 'linear'"):
        (tmp_path / "config.json").write_text(json.dumps({**base, "model_type": "phi3"}))
        llama.load_hf(tmp_path, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="only some layers"):
        load(model_type="qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=1)
    with pytest.raises(ValueError, match="attention_bias=True is not supported"):
        load(attention_bias=True)
    with pytest.raises(ValueError, match="unknown rope_type 'warp'"):
        load(rope_scaling={"rope_type": "warp", "factor": 2.0})
    with pytest.raises(ValueError, match=r"'llama' cannot take rope_type 'ntk'; valid: \('default', 'lin"):
        load(rope_scaling={"rope_type": "ntk", "factor": 2.0})
    with pytest.raises(ValueError, match="'mistral' rotates whole heads; partial_rotary_factor 0.5"):
        load(model_type="mistral", partial_rotary_factor=0.5)
    assert set(HF_MODEL_TYPES) == {"llama", "mistral", "qwen2", "phi3"}
    # Qwen2 with windows on no layer (max_window_layers >= layers) has no window.
    assert hf_config({**base, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8,
                      "max_window_layers": LAYERS}).window is None


def test_unread_tensor_is_refused(tmp_path):
    """A Llama checkpoint with o_proj biases the config hides is refused, not silently half-read."""
    from safetensors.numpy import load_file, save_file

    save_tiny(tmp_path, "llama")
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.layers.0.self_attn.o_proj.bias"] = np.ones(D, np.float32)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"o_proj.bias'\] \(of 1\) have no place"):
        llama.load_hf(tmp_path)


# ----------------------------------------------------------------------------- export

ROUND_TRIPS = {
    # name -> (model_type, saved overrides, rope_scaling given to load_hf, export kwargs, length)
    "llama_yarn2": ("llama", {}, {"rope_type": "yarn", "factor": 2.0}, {}, 48),
    # transformers' dynamic NTK scales from max_position_embeddings: exported as L, run past it.
    "llama_dynamic2": ("llama", {}, {"rope_type": "dynamic", "factor": 2.0}, {}, 48),
    "llama3_tied": ("llama", dict(rope_scaling=LLAMA3, tie_word_embeddings=True), None, {}, 40),
    "mistral_linear2": ("mistral", dict(sliding_window=8), {"rope_type": "linear", "factor": 2.0},
                        dict(max_position_embeddings=64), 30),
    "qwen2_yarn2_window": ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=0),
                           {"rope_type": "yarn", "factor": 2.0, "beta_fast": 16.0}, {}, 30),
    # ~230 KB of float32 weights written as 100 KB shards + index.
    "phi3_longrope_sharded": ("phi3", PHI3_LONGROPE, None, dict(max_shard_bytes=100_000), 40),
}


@pytest.mark.parametrize("case", cases(ROUND_TRIPS, ("llama3_tied", "mistral_linear2")))
def test_export_round_trip_through_transformers(tmp_path, case):
    """tiny HF dir -> load_hf (new rope) -> export_hf -> transformers and load_hf: same logits."""
    model_type, overrides, rope_scaling, kwargs, length = ROUND_TRIPS[case]
    save_tiny(tmp_path / "src", model_type, **overrides)
    model, _ = llama.load_hf(tmp_path / "src", rope_scaling=rope_scaling)
    export_hf(model, None, tmp_path / "out", architecture=model_type, **kwargs)
    files = sorted(os.listdir(tmp_path / "out"))
    if "max_shard_bytes" in kwargs:
        shards = [f for f in files if f.endswith(".safetensors")]
        assert len(shards) > 1 and files == ["config.json", *shards, "model.safetensors.index.json"]
        assert all(os.path.getsize(tmp_path / "out" / f) < 2 * kwargs["max_shard_bytes"] for f in shards)
    else:
        assert files == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    if rope_scaling is not None:
        assert config["rope_scaling"]["rope_type"] == rope_scaling["rope_type"]
    ours = np.asarray(forward(model, jnp.asarray(tokens(length))))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager")
    assert type(loaded).__name__ == config["architectures"][0]
    chex.assert_trees_all_close(ours, hf_logits(loaded.float().eval(), tokens(length)), atol=1e-4, rtol=0)
    again, _ = llama.load_hf(tmp_path / "out")
    assert again.cfg == model.cfg
    reloaded = np.asarray(forward(again, jnp.asarray(tokens(length))))
    chex.assert_trees_all_close(reloaded, ours, atol=1e-5, rtol=0)
    if "max_shard_bytes" in kwargs:  # re-exported unsharded, the earlier shards and index go
        export_hf(model, None, tmp_path / "out", architecture=model_type)
        assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]


def test_export_refuses_what_hf_cannot_express(tmp_path):
    save_tiny(tmp_path / "src", "llama")
    model, _ = llama.load_hf(tmp_path / "src")
    with pytest.raises(ValueError, match="max_position_embeddings cannot be derived"):
        export_hf(model, None, tmp_path / "out")
    sinks, _ = llama.load_hf(tmp_path / "src", window=8, sinks=4)
    with pytest.raises(ValueError, match="model.sinks=4 has no Hugging Face 'mistral' equivalent; valid: 0"):
        export_hf(sinks, None, tmp_path / "out", architecture="mistral", max_position_embeddings=32)
    windowed, _ = llama.load_hf(tmp_path / "src", window=8)
    with pytest.raises(ValueError, match="architecture 'llama' has no sliding window"):
        export_hf(windowed, None, tmp_path / "out", max_position_embeddings=32)
    yarn, _ = llama.load_hf(tmp_path / "src", rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="'phi3' cannot take rope_type 'yarn'"):
        export_hf(yarn, None, tmp_path / "out", architecture="phi3")
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        export_hf(yarn, None, tmp_path / "out", architecture="gpt2")
    ntk_cfg = yarn.cfg.replace(rope_scaling={"rope_type": "ntk", "factor": 2.0})
    ntk = nnx.eval_shape(lambda: Decoder(ntk_cfg, rngs=nnx.Rngs(0)))  # refused before any weight is read
    with pytest.raises(ValueError, match="'llama' cannot take rope_type 'ntk'"):
        export_hf(ntk, None, tmp_path / "out", max_position_embeddings=64)
    longrope = dict(PHI3_LONGROPE["rope_scaling"], original_max_position_embeddings=16)
    phi3 = nnx.eval_shape(lambda: Decoder(yarn.cfg.replace(rope_scaling=longrope), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"original_max_position_embeddings x factor = 16 .*; got 64"):
        export_hf(phi3, None, tmp_path / "out", architecture="phi3", max_position_embeddings=64)
    dynamic, _ = llama.load_hf(tmp_path / "src", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match=r"must equal original_max_position_embeddings \(32\)"):
        export_hf(dynamic, None, tmp_path / "out", max_position_embeddings=64)
    model.extra = nnx.Param(jnp.zeros((3,)))  # e.g. an unmerged adapter
    with pytest.raises(ValueError, match=r"\['extra'\] have no Hugging Face tensor"):
        export_hf(model, None, tmp_path / "out", max_position_embeddings=32)
    assert not (tmp_path / "out").exists()  # every refusal came before any write
    assert hf_config_dict(yarn.cfg, architecture_name="llama")["max_position_embeddings"] == 64

