"""Published LongRoPE factors: the shipped Phi-3.5-mini config.json, the transfer map, the HF dict."""

import json
import math
from importlib import resources

import chex
import numpy as np
import pytest

from longctx_jax.positional import published_longrope as pl
from longctx_jax.positional.rope import rope_frequencies
from longctx_jax.positional.rope_scaling import default_inv_freq


def test_phi35_file_values_as_published():
    p = pl.load_published("phi3.5-mini")
    assert p.long_factor.shape == (48,) and p.short_factor.shape == (48,)
    assert p.original_length == 4096 and p.factor == 32.0 and p.rotary_dim == 96 and p.base == 10000.0
    # Pinned from the hub file (data/README.md): first, last and sums of both lists.
    assert p.long_factor[0] == pytest.approx(1.0800000429153442, abs=1e-12)
    assert p.long_factor[-1] == pytest.approx(64.83999633789062, abs=1e-12)
    assert p.short_factor[0] == 1.0 and p.short_factor[-1] == pytest.approx(2.8399994373321533, abs=1e-12)
    assert np.all(np.diff(p.long_factor) >= 0) and np.all(np.diff(p.short_factor) >= 0)
    assert p.attention_factor() == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)), abs=1e-12)
    assert p.url.startswith("https://huggingface.co/microsoft/Phi-3.5-mini-instruct") and p.licence == "MIT"


def test_loader_reads_the_raw_file_not_a_copy():
    data = resources.files("longctx_jax.positional").joinpath("data")
    raw = json.loads(data.joinpath(pl.PUBLISHED["phi3.5-mini"].file).read_text())
    assert raw["rope_scaling"]["type"] == "longrope" and raw["original_max_position_embeddings"] == 4096
    p = pl.load_published()
    for key in ("long_factor", "short_factor"):
        chex.assert_trees_all_close(getattr(p, key), np.asarray(raw["rope_scaling"][key]), atol=0, rtol=0)


def _reference_transfer(lam, m, s, s_new):
    # Written independently: loop over target bands, locate the two neighbouring source points.
    n = len(lam)
    out = []
    for j in range(m):
        y = j / m
        pos = y * n  # fractional source index
        i = min(int(math.floor(pos)), n - 1)
        if i >= n - 1:
            mu = lam[-1]
        else:
            w = pos - i
            mu = (1 - w) * lam[i] + w * lam[i + 1]
        out.append(mu ** (math.log(s_new) / math.log(s)))
    return np.array(out)


@pytest.mark.parametrize("m", [8, 32, 48, 64])
@pytest.mark.parametrize("s_new", [1.0, 2.0, 4.0, 32.0])
def test_transfer_matches_reference(m, s_new):
    lam = pl.load_published().long_factor
    got = pl.transfer_factors(lam, m, source_factor=32.0, target_factor=s_new)
    chex.assert_shape(got, (m,))
    chex.assert_trees_all_close(got, _reference_transfer(list(lam), m, 32.0, s_new), atol=1e-5, rtol=1e-5)


def test_transfer_identities():
    lam = pl.load_published().long_factor
    # Same bands, same factor: the published values.
    chex.assert_trees_all_close(pl.transfer_factors(lam, 48, source_factor=32.0, target_factor=32.0), lam,
                                atol=1e-12, rtol=1e-12)
    # s' = 1: no interpolation anywhere; lambda = s maps to s'.
    chex.assert_trees_all_close(pl.transfer_factors(lam, 32, source_factor=32.0, target_factor=1.0),
                                np.ones(32), atol=1e-12)
    got = pl.transfer_factors([1.0, 32.0], 2, source_factor=32.0, target_factor=2.0)
    chex.assert_trees_all_close(got, np.array([1.0, 2.0]), atol=1e-12)
    # Four target bands over two source points: y = 1/4 lies halfway between x = 0 and x = 1/2.
    got = pl.transfer_factors([1.0, 32.0], 4, source_factor=32.0, target_factor=2.0)
    chex.assert_trees_all_close(got, np.array([1.0, 16.5 ** 0.2, 2.0, 2.0]), atol=1e-12)
    # Monotone input stays monotone.
    assert np.all(np.diff(pl.transfer_factors(lam, 32, source_factor=32.0, target_factor=2.0)) >= 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(factors=[2.0], num_bands=4, source_factor=32.0, target_factor=2.0), "factors must be"),
    (dict(factors=[1.0, 0.0], num_bands=4, source_factor=32.0, target_factor=2.0), "factors must be"),
    (dict(factors=[1.0, 2.0], num_bands=0, source_factor=32.0, target_factor=2.0), "num_bands"),
    (dict(factors=[1.0, 2.0], num_bands=4, source_factor=1.0, target_factor=2.0), "source_factor"),
    (dict(factors=[1.0, 2.0], num_bands=4, source_factor=32.0, target_factor=0.5), "target_factor"),
])
def test_transfer_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pl.transfer_factors(kwargs.pop("factors"), kwargs.pop("num_bands"), **kwargs)


def test_unknown_published_name():
    with pytest.raises(ValueError, match="unknown published LongRoPE model 'phi4'.*phi3.5-mini"):
        pl.load_published("phi4")


def test_published_rope_scaling_drives_rope_frequencies():
    rope = pl.published_rope_scaling("phi3.5-mini", rotary_dim=64, factor=2.0, original_length=8192)
    long = np.asarray(rope["long_factor"])
    inv_long, att = rope_frequencies(64, 1e5, rope, seq_len=16384)
    inv_short, _ = rope_frequencies(64, 1e5, rope, seq_len=8192)
    base = default_inv_freq(64, 1e5)
    chex.assert_trees_all_close(np.asarray(inv_long), (base / long).astype(np.float32), rtol=1e-6)
    short = np.asarray(rope["short_factor"])
    chex.assert_trees_all_close(np.asarray(inv_short), (base / short).astype(np.float32), rtol=1e-6)
    assert att == pytest.approx(math.sqrt(1 + math.log(2) / math.log(8192)), abs=1e-6)
    # The fastest band is barely interpolated, the slowest close to (but above) s' = 2.
    assert 1.0 <= long[0] < 1.05 and 2.0 < long[-1] < 2.5
    with pytest.raises(ValueError, match="original_length"):
        pl.published_rope_scaling("phi3.5-mini", rotary_dim=64, factor=2.0, original_length=0)
