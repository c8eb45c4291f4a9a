"""rope_frequencies for every rope_type against written-out formulas, band properties, errors."""

import math
import warnings

import chex
import numpy as np
import pytest

from longctx_jax.positional.rope import rope_config_from_hf, rope_frequencies
from longctx_jax.positional.rope_types import ROPE_TYPES

HEAD_DIMS = (32, 64, 128)
BASES = (1e4, 5e5, 1e6)
FACTORS = (2.0, 8.0, 32.0)
L = 4096


# ---- Reference formulas, written out band by band in float64 (independent of the package). ----


def ref_default(d, base):
    return np.array([base ** (-(2.0 * i) / d) for i in range(d // 2)])


def ref_linear(d, base, s):
    return np.array([base ** (-(2.0 * i) / d) / s for i in range(d // 2)])


def ref_ntk(d, base, s):
    new_base = base * s ** (d / (d - 2.0))
    return np.array([new_base ** (-(2.0 * i) / d) for i in range(d // 2)])


def ref_dynamic(d, base, s, length, seq_len):
    t = max(seq_len or 0, length)
    new_base = base * (s * t / length - s + 1.0) ** (d / (d - 2.0))
    return np.array([new_base ** (-(2.0 * i) / d) for i in range(d // 2)])


def ref_yarn(d, base, s, length, beta_fast=32.0, beta_slow=1.0, truncate=True):
    # Band i turns L / lambda_i times over the original length; solve for i at beta.
    def dim_at(turns):
        return d * math.log(length / (turns * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = dim_at(beta_fast), dim_at(beta_slow)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, d - 1)
    if lo == hi:
        hi += 0.001
    out = []
    for i in range(d // 2):
        theta = base ** (-(2.0 * i) / d)
        ramp = min(max((i - lo) / (hi - lo), 0.0), 1.0)  # 0: keep, 1: interpolate
        out.append(theta * (1 - ramp) + theta / s * ramp)
    return np.array(out), 0.1 * math.log(s) + 1.0


def ref_llama3(d, base, s, low, high, length):
    out = []
    for i in range(d // 2):
        theta = base ** (-(2.0 * i) / d)
        wavelength = 2 * math.pi / theta
        if wavelength < length / high:
            out.append(theta)
        elif wavelength > length / low:
            out.append(theta / s)
        else:
            a = (length / wavelength - low) / (high - low)
            out.append((1 - a) * theta / s + a * theta)
    return np.array(out)


def longrope_lists(d, s):
    rng = np.random.default_rng(d)
    short = 1.0 + rng.uniform(0.0, 0.2, d // 2)
    long = np.linspace(1.0, s, d // 2) * (1.0 + rng.uniform(0.0, 0.1, d // 2))
    return short.tolist(), long.tolist()


def close(actual, expected):
    chex.assert_trees_all_close(np.asarray(actual, np.float64), np.asarray(expected), rtol=1e-5, atol=0)


# ---- Every rope_type against its reference over a grid. ----


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("s", FACTORS)
def test_every_type_matches_reference(d, base, s):
    inv, att = rope_frequencies(d, base)
    close(inv, ref_default(d, base))
    assert inv.dtype == np.float32 and inv.shape == (d // 2,) and att == 1.0

    close(rope_frequencies(d, base, {"rope_type": "linear", "factor": s})[0], ref_linear(d, base, s))
    close(rope_frequencies(d, base, {"type": "ntk", "factor": s})[0], ref_ntk(d, base, s))

    dyn = {"rope_type": "dynamic", "factor": s, "original_max_position_embeddings": L}
    for seq_len in (None, 100, L, 3 * L, 40 * L):
        close(rope_frequencies(d, base, dyn, seq_len=seq_len)[0], ref_dynamic(d, base, s, L, seq_len))

    for beta_fast, beta_slow, truncate in ((32, 1, True), (16, 2, False)):
        cfg = {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": L,
               "beta_fast": beta_fast, "beta_slow": beta_slow, "truncate": truncate}
        inv, att = rope_frequencies(d, base, cfg)
        ref_inv, ref_att = ref_yarn(d, base, s, L, beta_fast, beta_slow, truncate)
        close(inv, ref_inv)
        assert att == pytest.approx(ref_att, rel=1e-12)

    short, long = longrope_lists(d, s)
    cfg = {"rope_type": "longrope", "short_factor": short, "long_factor": long, "factor": s,
           "original_max_position_embeddings": L}
    for seq_len, ext in ((None, short), (L, short), (L + 1, long)):
        inv, att = rope_frequencies(d, base, cfg, seq_len=seq_len)
        close(inv, ref_default(d, base) / np.array(ext))
        assert att == pytest.approx(math.sqrt(1 + math.log(s) / math.log(L)), rel=1e-12)

    cfg = {"rope_type": "llama3", "factor": s, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": L}
    close(rope_frequencies(d, base, cfg)[0], ref_llama3(d, base, s, 1.0, 4.0, L))


def test_partial_rotary_uses_rotary_dim():
    inv, _ = rope_frequencies(80, 1e4, {"rope_type": "default", "partial_rotary_factor": 0.4})
    close(inv, ref_default(32, 1e4))
    inv, _ = rope_frequencies(128, 1e4, {"rope_type": "yarn", "factor": 4, "partial_rotary_factor": 0.5,
                                         "original_max_position_embeddings": L})
    close(inv, ref_yarn(64, 1e4, 4.0, L)[0])


# ---- Properties named in the issue. ----


@pytest.mark.parametrize("name", ["linear", "ntk", "yarn", "llama3"])
def test_factor_one_is_default(name):
    cfg = {"rope_type": name, "factor": 1.0, "original_max_position_embeddings": L,
           "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    inv, att = rope_frequencies(128, 1e4, cfg, seq_len=2 * L)
    chex.assert_trees_all_close(inv, rope_frequencies(128, 1e4)[0], rtol=1e-6)
    assert att == 1.0


@pytest.mark.parametrize("d, base, s", [(128, 1e4, 4.0), (128, 5e5, 16.0), (64, 1e6, 8.0)])
def test_yarn_keeps_high_bands_and_divides_lowest(d, base, s):
    cfg = {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": L}
    inv, _ = rope_frequencies(d, base, cfg)
    plain = ref_default(d, base)
    wavelength = 2 * np.pi / plain
    high = wavelength < L / 32
    assert high.sum() >= 4
    np.testing.assert_array_equal(inv[high], plain[high].astype(np.float32))
    close(inv[-1], plain[-1] / s)
    assert np.all(inv <= plain.astype(np.float32)) and np.all(inv >= (plain / s).astype(np.float32))


def test_dynamic_is_default_up_to_original_length_then_grows_base():
    d, base, s = 128, 1e4, 4.0
    cfg = {"rope_type": "dynamic", "factor": s, "original_max_position_embeddings": L}
    plain = rope_frequencies(d, base)[0]
    for seq_len in (None, 1, L // 2, L):
        np.testing.assert_array_equal(rope_frequencies(d, base, cfg, seq_len=seq_len)[0], plain)
    previous = plain
    for seq_len in (L + 1, 2 * L, 8 * L):
        inv = rope_frequencies(d, base, cfg, seq_len=seq_len)[0]
        # inv_freq_1 = base'^(-2/d): recover the grown base.
        grown = float(inv[1]) ** (-d / 2.0)
        expected = base * (s * seq_len / L - (s - 1)) ** (d / (d - 2))
        assert grown == pytest.approx(expected, rel=1e-4)
        assert inv[0] == 1.0 and np.all(inv[1:] < previous[1:])
        previous = inv


def test_llama31_published_config_band_by_band():
    cfg = rope_config_from_hf({
        "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    })
    inv, att = rope_frequencies(128, cfg.theta, cfg.rope_scaling)
    plain = ref_default(128, 5e5)
    wavelength = 2 * np.pi / plain
    high, low = wavelength < 8192 / 4, wavelength > 8192 / 1
    medium = ~high & ~low
    assert high.sum() > 0 and low.sum() > 0 and medium.sum() > 0
    close(inv[high], plain[high])
    close(inv[low], plain[low] / 8)
    a = (8192 / wavelength[medium] - 1.0) / (4.0 - 1.0)
    close(inv[medium], (1 - a) * plain[medium] / 8 + a * plain[medium])
    assert np.all((a > 0) & (a < 1)) and att == 1.0


def test_longrope_phi3_config_switches_lists_and_attention_factor():
    short, long = longrope_lists(96, 32.0)
    hf = {"hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 131072,
          "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
          "rope_scaling": {"type": "su", "short_factor": short, "long_factor": long}}
    cfg = rope_config_from_hf(hf)
    assert cfg.rope_scaling["rope_type"] == "longrope" and cfg.rope_scaling["factor"] == 32.0
    inv_short, att = rope_frequencies(96, cfg.theta, cfg.rope_scaling, seq_len=4096)
    inv_long, _ = rope_frequencies(96, cfg.theta, cfg.rope_scaling, seq_len=4097)
    close(inv_short, ref_default(96, 1e4) / np.array(short))
    close(inv_long, ref_default(96, 1e4) / np.array(long))
    assert att == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
    explicit = dict(cfg.rope_scaling, attention_factor=1.5)
    assert rope_frequencies(96, 1e4, explicit)[1] == 1.5


def test_yarn_mscale_and_attention_factor_override():
    cfg = {"rope_type": "yarn", "factor": 40, "original_max_position_embeddings": 4096}
    assert rope_frequencies(64, 1e4, cfg)[1] == pytest.approx(0.1 * math.log(40) + 1)
    deepseek = dict(cfg, mscale=1.0, mscale_all_dim=1.0, beta_fast=32, beta_slow=1)
    assert rope_frequencies(64, 1e4, deepseek)[1] == pytest.approx(1.0)
    ratio = dict(cfg, mscale=1.0, mscale_all_dim=0.707)
    expected = (0.1 * math.log(40) + 1) / (0.1 * 0.707 * math.log(40) + 1)
    assert rope_frequencies(64, 1e4, ratio)[1] == pytest.approx(expected)
    assert rope_frequencies(64, 1e4, dict(cfg, attention_factor=0.9))[1] == 0.9


# ---- HF config spellings. ----

LONG_LISTS = longrope_lists(96, 32.0)
REAL_CONFIGS = {
    "llama2": {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 4096,
               "rope_theta": 10000.0, "rope_scaling": None},
    "codellama": {"hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 1000000},
    "llama2_linear_legacy": {"hidden_size": 5120, "num_attention_heads": 40, "max_position_embeddings": 16384,
                             "rope_scaling": {"factor": 4.0, "type": "linear"}},
    "dynamic": {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 4096,
                "rope_scaling": {"factor": 2.0, "type": "dynamic"}},
    "qwen25_yarn": {"hidden_size": 5120, "num_attention_heads": 40, "max_position_embeddings": 32768,
                    "rope_theta": 1e6, "rope_scaling": {"factor": 4.0, "type": "yarn",
                                                        "original_max_position_embeddings": 32768}},
    "deepseek_v3": {"hidden_size": 7168, "num_attention_heads": 128, "head_dim": 64,
                    "max_position_embeddings": 163840, "rope_theta": 10000,
                    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                                     "type": "yarn"}},
    "phi3_longrope": {"hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 131072,
                      "original_max_position_embeddings": 4096,
                      "rope_scaling": {"type": "longrope", "short_factor": LONG_LISTS[0],
                                       "long_factor": LONG_LISTS[1]}},
    "v5_rope_parameters": {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 131072,
                           "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 8192}},
    "neox_partial": {"hidden_size": 2560, "num_attention_heads": 32, "rotary_pct": 0.25,
                     "rotary_emb_base": 10000},
    "v5_partial_inside": {"hidden_size": 2048, "num_attention_heads": 32, "max_position_embeddings": 2048,
                          "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                              "partial_rotary_factor": 0.5}},
}


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_real_configs_load_without_warnings(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = rope_config_from_hf(REAL_CONFIGS[name])
        hf = REAL_CONFIGS[name]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
        inv, att = rope_frequencies(head_dim, cfg.theta, cfg.rope_scaling, seq_len=200_000)
    assert inv.shape == (int(head_dim * cfg.partial_rotary_factor) // 2,)
    assert np.all(np.isfinite(inv)) and np.all(inv > 0) and att > 0


def test_config_spellings_agree():
    old = rope_config_from_hf(REAL_CONFIGS["qwen25_yarn"])
    new = rope_config_from_hf({
        "hidden_size": 5120, "num_attention_heads": 40, "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}})
    assert old == new and old.theta == 1e6
    assert rope_config_from_hf(REAL_CONFIGS["llama2"]) == (10000.0, None, 1.0)
    partial = rope_config_from_hf(REAL_CONFIGS["neox_partial"])
    assert partial.partial_rotary_factor == 0.25 and partial.rope_scaling["rope_type"] == "default"
    gemma3 = {"head_dim": 256, "max_position_embeddings": 131072, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}
    assert rope_config_from_hf(gemma3, layer_type="full_attention") == (
        1e6, {"rope_type": "linear", "factor": 8.0}, 1.0)
    assert rope_config_from_hf(gemma3, layer_type="sliding_attention") == (10000.0, None, 1.0)
    with pytest.raises(ValueError, match="full_attention"):
        rope_config_from_hf(gemma3)


# ---- Errors. ----


@pytest.mark.parametrize("head_dim, base, cfg, match", [
    (64, 1e4, {"rope_type": "xpos"}, r"unknown rope_type 'xpos'.*'yarn'"),
    (64, 1e4, {"type": "linear", "factor": 0.5}, "factor must be >= 1"),
    (64, 1e4, {"rope_type": "linear"}, r"missing \['factor'\]"),
    (64, 1e4, {"rope_type": "yarn", "factor": 4}, "original_max_position_embeddings"),
    (64, 1e4, {"rope_type": "llama3", "factor": 8, "original_max_position_embeddings": 8192},
     "low_freq_factor"),
    (64, 1e4, {"rope_type": "longrope", "short_factor": [1.0] * 31, "long_factor": [1.0] * 32,
               "original_max_position_embeddings": 4096}, "32 entries"),
    (64, 1e4, {"rope_type": "longrope", "short_factor": "1,2", "long_factor": [1.0] * 32,
               "original_max_position_embeddings": 4096}, "list of 32"),
    (63, 1e4, None, "positive even"),
    (64, 1e4, {"rope_type": "default", "partial_rotary_factor": 0.3}, "even"),
    (64, 1.0, None, "must be > 1"),
    (64, 1e4, {"rope_type": "linear", "factor": "4"}, "finite number"),
    (64, 1e4, {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1,
               "original_max_position_embeddings": 8192}, "low_freq_factor < high_freq_factor"),
])
def test_bad_configs_raise(head_dim, base, cfg, match):
    with pytest.raises(ValueError, match=match):
        rope_frequencies(head_dim, base, cfg)


def test_error_lists_every_valid_type():
    with pytest.raises(ValueError) as err:
        rope_frequencies(64, 1e4, {"rope_type": "nope"})
    assert all(name in str(err.value) for name in ROPE_TYPES)
