"""Figures and report.md from results, and the whole suite on a tiny from-scratch decoder."""

import json
import math

import pytest
from flax import nnx

from longctx_jax.data.tokenizers import ByteTokenizer
from longctx_jax.eval.plots import accuracy_grid
from longctx_jax.eval.report import paired_table, paired_verdict, reading
from longctx_jax.eval.suite import SuiteSpec, evaluate_checkpoint
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder

RESULTS = {
    "model": "m", "train_length": 8192,
    "perplexity": [
        {"method": "none", "length": 8192, "doc": "d", "nll": 2.0, "nll_last_quarter": 1.5,
         "block_nll": [1.9, 2.1]},
        {"method": "none", "length": 16384, "doc": "d", "nll": 3.0, "nll_last_quarter": 4.0,
         "block_nll": [2.0, 4.0]},
        {"method": "yarn", "length": 16384, "doc": "d", "nll": 2.1, "nll_last_quarter": 1.6,
         "block_nll": [1.8, 2.4]},
    ],
    "passkey": [
        {"method": "none", "length": 4096, "depth": 0.0, "accuracy": 1.0},
        {"method": "none", "length": 4096, "depth": 1.0, "accuracy": 0.5},
        {"method": "none", "length": 16384, "depth": 0.0, "accuracy": 0.0},
    ],
}


def test_reading_is_computed_from_the_numbers():
    text = reading(RESULTS)
    assert f"{math.exp(2.0):.2f} [" in text and "at 8192" in text and f"{math.exp(3.0):.2f} [" in text
    assert f"({math.exp(1.0):.1f}x)" in text
    assert text.index("yarn") < text.index(f"none {math.exp(3.0):.2f}")  # ranked by perplexity
    assert "yarn is lower than none there" in text
    assert "none 0.75 within / 0.00 beyond" in text


def test_paired_table_applies_the_fixed_rule_per_pair():
    rows = [{"method": m, "length": 64, "doc": d, "nll": 0.0, "block_nll": blocks}
            for m, d, blocks in (("base", "a", [2.0, 2.2, 2.4]), ("base", "b", [3.0, 3.1, 2.9]),
                                 ("tuned", "a", [1.5, 1.8, 1.9]), ("tuned", "b", [2.7, 2.6, 2.5]),
                                 ("same", "a", [2.1, 2.1, 2.4]), ("same", "b", [2.9, 3.2, 2.9]))]
    lines = paired_table(rows, [("tuned", "base"), ("same", "base")])
    assert len(lines) == 4
    tuned, same = lines[2].split(" | "), lines[3].split(" | ")
    # every tuned block is 0.3..0.5 below its base block: every resample's mean difference is < 0;
    # the difference is the mean over documents of each document's mean: (-0.4667 - 0.4) / 2
    delta = ((-0.5 - 0.4 - 0.5) / 3 + (-0.3 - 0.5 - 0.4) / 3) / 2
    assert tuned[-1].rstrip(" |") == "lower than" and tuned[5].startswith(f"{delta:+.3f} [")
    assert tuned[6] == f"x{math.exp(delta):.3f}"
    # differences +0.1, -0.1, 0, -0.1, +0.1, 0: the interval straddles 0
    assert same[-1].rstrip(" |") == "not distinguishable from"
    assert paired_verdict({"delta_lo": 0.01, "delta_hi": 0.2}) == "higher than"


def test_accuracy_grid_marks_missing_cells():
    depths, lengths, grid = accuracy_grid(RESULTS["passkey"], "none")
    assert depths == [0.0, 1.0] and lengths == [4096, 16384]
    assert grid[0, 0] == 1.0 and grid[1, 0] == 0.5 and math.isnan(grid[1, 1])


def test_suite_on_tiny_decoder_writes_everything(tmp_path):
    cfg = ModelConfig(vocab_size=ByteTokenizer.vocab_size, d_model=32, num_layers=1, num_heads=4,
                      num_kv_heads=2, mlp_dim=64)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    spec = SuiteSpec(ppl_lengths=(256, 512), strided_windows=(256,), strided_stride=128,
                     strided_doc_length=512, passkey_lengths=(512,), passkey_depths=(0.0, 1.0),
                     niah_lengths=(512,), niah_depths=(0.5,), batch_tokens=512)
    store = evaluate_checkpoint(model, ByteTokenizer(), tmp_path, spec, name="tiny", train_length=256)
    for name in ("results.json", "report.md", "ppl_vs_length.png", "passkey.png", "niah_none.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == store.data and saved["model"] == "tiny" and saved["train_length"] == 256
    assert [(r["method"], r["length"]) for r in saved["perplexity"]] == [("none", 256), ("none", 512)]
    ci = saved["perplexity_intervals"]["none@512"]  # the interval the report shows, in results.json
    assert ci["nll_lo"] <= ci["nll"] <= ci["nll_hi"] and ci["docs"] == [saved["perplexity"][1]["doc"]]
    assert len(saved["passkey"]) == 2 and len(saved["niah"]) == 1 and len(saved["perplexity_strided"]) == 1
    assert "| none |" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="unknown eval fields"):
        SuiteSpec.from_mapping({"ppl_length": (1,)})
