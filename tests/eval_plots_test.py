"""Retrieval heatmaps and tables carry both scorers and the trial count of every cell."""

import pytest

from longctx_jax.eval.plots import accuracy_grid, cell_label, plot_heatmaps, write_figures
from longctx_jax.eval.report import accuracy_table, reading

ROWS = [
    {"method": "none", "length": 4096, "depth": 0.0, "accuracy": 0.6, "lenient_accuracy": 1.0, "hits": 3,
     "lenient_hits": 5, "trials": 5},
    {"method": "none", "length": 4096, "depth": 1.0, "accuracy": 0.2, "lenient_accuracy": 0.4, "hits": 1,
     "lenient_hits": 2, "trials": 5},
    {"method": "none", "length": 16384, "depth": 0.0, "accuracy": 0.0, "lenient_accuracy": 0.2, "hits": 0,
     "lenient_hits": 1, "trials": 5},
]


def test_cell_label_shows_hits_over_trials_per_scorer():
    assert cell_label(ROWS[0]) == "3/5" and cell_label(ROWS[0], "lenient_accuracy") == "5/5"
    assert cell_label({"accuracy": 0.5}) == "0.50"  # rows written before trial counts


def test_grid_per_scorer():
    _, _, strict = accuracy_grid(ROWS, "none")
    _, _, lenient = accuracy_grid(ROWS, "none", "lenient_accuracy")
    assert strict[0, 0] == pytest.approx(0.6, abs=1e-12) and lenient[0, 0] == pytest.approx(1.0, abs=1e-12)


def test_heatmap_has_a_row_per_scorer(tmp_path):
    path = tmp_path / "passkey.png"
    plot_heatmaps(ROWS, path, train_length=8192, title="m passkey")
    assert path.stat().st_size > 0


def test_table_and_reading_give_both_scorers_with_counts():
    table = "\n".join(accuracy_table(ROWS))
    assert "| none | 0.40 / 0.70 (n=10) | 0.00 / 0.20 (n=5) |" in table
    text = reading({"train_length": 8192, "passkey": ROWS})
    assert "accuracy (strict) (within vs beyond 8192 tokens): none 0.40 within / 0.00 beyond" in text
    assert "Lenient (first integer of the greedy output): none 0.70 within / 0.20 beyond." in text


def test_ruler_figure_is_written_with_the_others(tmp_path):
    ruler = [{"method": m, "task": t, "length": n, "trials": 3, "score": s}
             for m, s in (("none", 0.2), ("yarn", 0.6)) for t in ("vt", "cwe") for n in (4096, 16384)]
    paths = write_figures({"train_length": 8192, "model": "m", "passkey": ROWS, "ruler": ruler}, tmp_path)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["passkey.png", "ruler.png"]
    assert all((tmp_path / name).stat().st_size > 0 for name in ("passkey.png", "ruler.png"))
