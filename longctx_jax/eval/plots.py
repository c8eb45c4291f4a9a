"""Figures from a results file, written as PNG without a display.

Figures are `matplotlib.figure.Figure` objects saved directly (no pyplot), so importing this
module leaves the caller's matplotlib backend alone (inline plots in a notebook keep working).

  ppl_vs_length.png   perplexity (log y) against context length, one line per method: the mean
                      over documents with its 95 % bootstrap band, and the last quarter; the
                      training length is marked.
  passkey.png         accuracy heatmaps (depth x length) per method, a row per scorer
                      (strict, lenient); each cell reads hits/trials.
  niah_<method>.png   the needle-in-a-haystack heatmaps of one method (both scorers).
  ruler.png           RULER score against length per task and averaged, a line per method.
  rope_wavelengths.png  the wavelength of every RoPE band under each scaling (no results file:
                      `plot_rope_wavelengths`, run by `experiments/plot_rope_wavelengths.py`).
"""

import math
import os
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from longctx_jax.eval.perplexity import summarize
from longctx_jax.positional.rope import rope_frequencies


def _methods(records: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in records))


def plot_ppl_vs_length(records: Sequence[dict], path: str | os.PathLike, *, train_length: int | None = None,
                       title: str = "") -> None:
    """Writes the perplexity-vs-length figure from `perplexity` records: the mean over documents
    with its 95 % bootstrap band (all positions), and the mean last-quarter perplexity."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    summaries = summarize(records)
    for method in _methods(records):
        rows = sorted((s for s in summaries if s["method"] == method), key=lambda s: s["length"])
        x = [s["length"] for s in rows]
        line, = axes[0].plot(x, [s["ppl"] for s in rows], marker="o", label=method)
        axes[0].fill_between(x, [s["ppl_lo"] for s in rows], [s["ppl_hi"] for s in rows],
                             color=line.get_color(), alpha=0.2)
        quarter = [np.exp(np.mean([r["nll_last_quarter"] for r in records
                                   if r["method"] == method and r["length"] == n])) for n in x]
        axes[1].plot(x, quarter, marker="o", label=method)
    num_docs = max((len(s["docs"]) for s in summaries), default=0)
    for ax, label in ((axes[0], f"all positions, mean of {num_docs} doc(s), 95% band"),
                      (axes[1], "last quarter")):
        if train_length:
            ax.axvline(train_length, color="grey", linestyle="--", label=f"train length {train_length}")
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_title(f"perplexity, {label}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("perplexity")
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


SCORERS = (("accuracy", "hits", "strict"), ("lenient_accuracy", "lenient_hits", "lenient"))


def accuracy_grid(records: Sequence[dict], method: str, key: str = "accuracy"
                  ) -> tuple[list[float], list[int], np.ndarray]:
    """(depths, lengths, `key` `[depths, lengths]`, NaN where a cell is missing)."""
    rows = [r for r in records if r["method"] == method]
    depths = sorted({r["depth"] for r in rows})
    lengths = sorted({r["length"] for r in rows})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for r in rows:
        if key in r:
            grid[depths.index(r["depth"]), lengths.index(r["length"])] = r[key]
    return depths, lengths, grid


def cell_label(record: dict, key: str = "accuracy") -> str:
    """A heatmap cell's text: "hits/trials" when the row counts them, else the accuracy."""
    hits = dict((a, h) for a, h, _ in SCORERS).get(key)
    if hits in record and "trials" in record:
        return f"{record[hits]}/{record['trials']}"
    return f"{record[key]:.2f}"


def _heatmap(ax, records: Sequence[dict], method: str, train_length: int | None, key: str = "accuracy",
             scorer: str = ""):
    depths, lengths, grid = accuracy_grid(records, method, key)
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{round(d * 100)}%" for d in depths])
    for r in records:
        if r["method"] == method and key in r:
            i, j = depths.index(r["depth"]), lengths.index(r["length"])
            ax.text(j, i, cell_label(r, key), ha="center", va="center", fontsize=7)
    if train_length:
        beyond = [j for j, n in enumerate(lengths) if n > train_length]
        if beyond:
            ax.axvline(beyond[0] - 0.5, color="black", linewidth=2)
    ax.set_xlabel("context length")
    trials = sorted({r["trials"] for r in records if r["method"] == method and "trials" in r})
    count = f", n={'/'.join(map(str, trials))} per cell" if trials else ""
    ax.set_title(f"{method} {scorer}{count}".replace("  ", " "))
    return image


def plot_heatmaps(records: Sequence[dict], path: str | os.PathLike, *, train_length: int | None = None,
                  title: str = "", methods: Sequence[str] | None = None) -> None:
    """Writes depth x length accuracy heatmaps, one column per method; a row per scorer
    (strict, lenient) when the records carry the lenient score. Each cell reads hits/trials."""
    methods = list(methods) if methods is not None else _methods(records)
    if not methods:
        raise ValueError("no records to plot")
    scorers = [(key, name) for key, _, name in SCORERS if any(key in r for r in records)]
    fig = Figure(figsize=(3.2 * len(methods) + 1, 4 * len(scorers)), layout="constrained")
    axes = fig.subplots(len(scorers), len(methods), squeeze=False)
    image = None
    for row, (key, name) in enumerate(scorers):
        for ax, method in zip(axes[row], methods, strict=True):
            image = _heatmap(ax, records, method, train_length, key, name if len(scorers) > 1 else "")
        axes[row][0].set_ylabel(f"needle depth ({name})" if len(scorers) > 1 else "needle depth")
    fig.colorbar(image, ax=list(axes.ravel()), label="accuracy")
    if title:  # wrapped to the figure's width: one narrow heatmap would clip a long model name
        fig.suptitle("\n".join(textwrap.wrap(title, int(8 * fig.get_figwidth()))))
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_ruler(records: Sequence[dict], path: str | os.PathLike, *, train_length: int | None = None,
               title: str = "") -> None:
    """Writes RULER score against length: one panel per task and one for the mean over tasks,
    a line per method; each panel's title gives the trials per point."""
    tasks = list(dict.fromkeys(r["task"] for r in records))
    if not tasks:
        raise ValueError("no RULER records to plot")
    panels = [*tasks, "mean over tasks"]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.3 * cols, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        in_panel = [r for r in records if panel == panels[-1] or r["task"] == panel]
        for method in _methods(records):
            mine = [r for r in in_panel if r["method"] == method]
            lengths = sorted({r["length"] for r in mine})
            scores = [np.mean([r["score"] for r in mine if r["length"] == n]) for n in lengths]
            ax.plot(lengths, scores, marker="o", label=method)
        if train_length:
            ax.axvline(train_length, color="grey", linestyle="--")
        trials = sorted({r["trials"] for r in in_panel})
        ax.set_title(f"{panel} (n={'/'.join(map(str, trials))})", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].set_ylabel("score (string_match_all)")
    axes[len(panels) - 1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)


def write_figures(results: dict, workdir: str | os.PathLike) -> list[str]:
    """All figures of a results dict into `workdir`; returns the written paths."""
    train_length = results.get("train_length")
    model = results.get("model", "")
    written = []
    if results.get("perplexity"):
        path = os.path.join(workdir, "ppl_vs_length.png")
        plot_ppl_vs_length(results["perplexity"], path, train_length=train_length, title=model)
        written.append(path)
    if results.get("passkey"):
        path = os.path.join(workdir, "passkey.png")
        plot_heatmaps(results["passkey"], path, train_length=train_length, title=f"{model} passkey")
        written.append(path)
    for method in _methods(results.get("niah", [])):
        path = os.path.join(workdir, f"niah_{method}.png")
        plot_heatmaps(results["niah"], path, train_length=train_length, title=f"{model} needle in a haystack",
                      methods=[method])
        written.append(path)
    if results.get("ruler"):
        path = os.path.join(workdir, "ruler.png")
        plot_ruler(results["ruler"], path, train_length=train_length, title=f"{model} RULER-style suite")
        written.append(path)
    return written


def rope_wavelength_methods(head_dim: int, length: int, factor: float) -> dict[str, dict | None]:
    """The RoPE scalings the wavelength figure draws, each extending `length` by `factor`."""
    return {
        "default": None,
        "linear (PI)": {"rope_type": "linear", "factor": factor},
        "ntk": {"rope_type": "ntk", "factor": factor},
        f"dynamic (T = {factor:g}L)": {"rope_type": "dynamic", "factor": factor,
                                       "original_max_position_embeddings": length},
        "yarn": {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": length},
        "llama3": {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": length},
        "longrope (ramp lists)": {
            "rope_type": "longrope", "factor": factor, "original_max_position_embeddings": length,
            "short_factor": [1.0] * (head_dim // 2),
            # Illustrative long factors: 1 for the fastest bands, rising smoothly to the factor.
            "long_factor": (1.0 + (factor - 1.0) * np.linspace(0, 1, head_dim // 2) ** 2).tolist(),
        },
    }


def plot_rope_wavelengths(path: str | os.PathLike, *, head_dim: int = 128, base: float = 1e4,
                          length: int = 4096, factor: float = 8.0) -> None:
    """Writes the wavelength (2 pi / inv_freq, tokens) of each of the `head_dim / 2` RoPE bands.

    Defaults: a Llama-2-like setting (head dim 128, base 1e4, pretrained length L = 4096)
    extended 8x. The right panel divides each scaled wavelength by the plain one, so it shows
    which bands each method changes (1 = untouched, `factor` = interpolated as PI).
    """
    if head_dim <= 0 or head_dim % 2 or length <= 0 or factor < 1.0:
        raise ValueError(f"need an even head_dim > 0, length > 0 and factor >= 1; got head_dim={head_dim}, "
                         f"length={length}, factor={factor}")
    plain, _ = rope_frequencies(head_dim, base)
    bands = np.arange(head_dim // 2)
    fig = Figure(figsize=(12, 4.5))
    ax_wave, ax_ratio = fig.subplots(1, 2)
    for name, cfg in rope_wavelength_methods(head_dim, length, factor).items():
        inv_freq, attn_factor = rope_frequencies(head_dim, base, cfg, seq_len=int(factor * length))
        wavelength = 2 * math.pi / inv_freq.astype(np.float64)
        label = name if attn_factor == 1.0 else f"{name} (attn x{attn_factor:.3f})"
        ax_wave.semilogy(bands, wavelength, label=label)
        ax_ratio.semilogy(bands, plain / inv_freq, label=name)
    for ax in (ax_wave, ax_ratio):
        ax.set_xlabel("band index i (channel pair)")
        ax.grid(alpha=0.3)
    ax_wave.axhline(length, color="k", ls=":", lw=1)
    ax_wave.axhline(length / 32, color="gray", ls=":", lw=1)
    ax_wave.text(1, length * 1.3, f"L = {length}", fontsize=8)
    ax_wave.text(1, length / 32 * 1.3, "L / beta_fast", fontsize=8)
    ax_wave.set_ylabel("wavelength 2 pi / inv_freq (tokens)")
    ax_wave.set_title(f"RoPE wavelengths, d={head_dim}, base={base:g}, s={factor:g}")
    ax_ratio.set_ylabel("scaled wavelength / plain wavelength")
    ax_ratio.set_title("which bands each method stretches")
    ax_wave.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
