"""report.md from a results dict: tables and a reading written from the numbers.

Nothing in the report is typed by hand: every figure is read from results.json, and the
reading paragraph states comparisons (in-length vs beyond-length perplexity of the unscaled
model, the best method at the longest length, retrieval inside vs beyond the training length)
only for the cells the results actually contain.
"""

import math
import os

import numpy as np


def _ppl(nll: float) -> str:
    return f"{math.exp(nll):.2f}"


def _lookup(records, **key):
    for r in records:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def _methods(records) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in records))


def perplexity_table(records) -> list[str]:
    """Markdown rows: PPL (all / last quarter) per method and length."""
    lengths = sorted({r["length"] for r in records})
    lines = ["| method | " + " | ".join(str(n) for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for m in _methods(records):
        cells = []
        for n in lengths:
            r = _lookup(records, method=m, length=n)
            cells.append("" if r is None else f"{_ppl(r['nll'])} / {_ppl(r['nll_last_quarter'])}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _has_lenient(records) -> bool:
    return any("lenient_accuracy" in r for r in records)


def accuracy_table(records) -> list[str]:
    """Markdown rows: accuracy averaged over depths, per method and length; with the lenient
    score beside the strict one ("strict / lenient") and the trials behind each mean."""
    lengths = sorted({r["length"] for r in records})
    lenient = _has_lenient(records)
    lines = ["| method | " + " | ".join(str(n) for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for m in _methods(records):
        cells = []
        for n in lengths:
            rows = [r for r in records if r["method"] == m and r["length"] == n]
            if not rows:
                cells.append("")
                continue
            cell = f"{np.mean([r['accuracy'] for r in rows]):.2f}"
            if lenient:
                cell += f" / {np.mean([r.get('lenient_accuracy', np.nan) for r in rows]):.2f}"
            if all("trials" in r for r in rows):
                cell += f" (n={sum(r['trials'] for r in rows)})"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def ruler_table(records) -> list[str]:
    """Markdown rows: RULER score (mean over trials, n trials) per task and method, by length,
    and the mean over the tasks each method ran at every length."""
    lengths = sorted({r["length"] for r in records})
    tasks = list(dict.fromkeys(r["task"] for r in records))
    lines = ["| task | method | " + " | ".join(str(n) for n in lengths) + " |",
             "|---|---|" + "---|" * len(lengths)]
    for task in tasks:
        for m in _methods(records):
            rows = [_lookup(records, method=m, task=task, length=n) for n in lengths]
            cells = [f"{r['score']:.2f} (n={r['trials']})" if r else "" for r in rows]
            if any(cells):
                lines.append(f"| {task} | {m} | " + " | ".join(cells) + " |")
    for m in _methods(records):
        cells = []
        for n in lengths:
            scores = [r["score"] for r in records if r["method"] == m and r["length"] == n]
            cells.append(f"{np.mean(scores):.2f} ({len(scores)} tasks)" if scores else "")
        lines.append(f"| **mean** | {m} | " + " | ".join(cells) + " |")
    return lines


def mean_accuracy(records, method: str, *, within: int | None = None,
                  beyond: int | None = None, key: str = "accuracy") -> float | None:
    """Mean `key` of a method over lengths <= within (or > beyond); None if no such cell."""
    accs = [r[key] for r in records if r["method"] == method and key in r
            and (within is None or r["length"] <= within) and (beyond is None or r["length"] > beyond)]
    return float(np.mean(accs)) if accs else None


def reading(results: dict) -> str:
    """One paragraph of observations computed from the results."""
    train = results.get("train_length")
    ppl = results.get("perplexity", [])
    sentences = []
    base = sorted((r for r in ppl if r["method"] == "none"), key=lambda r: r["length"])
    inside = [r for r in base if train is None or r["length"] <= train]
    outside = [r for r in base if train is not None and r["length"] > train]
    if inside and outside:
        a, b = inside[-1], outside[-1]
        sentences.append(
            f"Without scaling, last-quarter perplexity goes from {_ppl(a['nll_last_quarter'])} at "
            f"{a['length']} tokens (inside the {train}-token training length) to "
            f"{_ppl(b['nll_last_quarter'])} at {b['length']} tokens "
            f"({math.exp(b['nll_last_quarter'] - a['nll_last_quarter']):.1f}x).")
    if ppl:
        longest = max(r["length"] for r in ppl)
        at_max = sorted((r for r in ppl if r["length"] == longest), key=lambda r: r["nll_last_quarter"])
        if len(at_max) > 1:
            ranking = ", ".join(f"{r['method']} {_ppl(r['nll_last_quarter'])}" for r in at_max)
            sentences.append(f"At {longest} tokens the methods rank by last-quarter perplexity as: "
                             f"{ranking}.")
    for section, name in (("passkey", "passkey retrieval"), ("niah", "needle-in-a-haystack")):
        recs = results.get(section, [])
        parts = []
        for m in _methods(recs):
            inn = mean_accuracy(recs, m, within=train) if train else None
            out = mean_accuracy(recs, m, beyond=train) if train else None
            if inn is not None and out is not None:
                parts.append(f"{m} {inn:.2f} within / {out:.2f} beyond")
            elif inn is not None:
                parts.append(f"{m} {inn:.2f} within")
            elif out is not None:
                parts.append(f"{m} {out:.2f} beyond")
        if parts:
            scorer = " (strict)" if _has_lenient(recs) else ""
            sentences.append(f"Mean {name} accuracy{scorer} (within vs beyond {train} tokens): "
                             + "; ".join(parts) + ".")
        if _has_lenient(recs) and train:
            lenient = []
            for m in _methods(recs):
                key = "lenient_accuracy"
                vals = [(w, v) for w, v in (("within", mean_accuracy(recs, m, within=train, key=key)),
                                            ("beyond", mean_accuracy(recs, m, beyond=train, key=key)))
                        if v is not None]
                if vals:
                    lenient.append(f"{m} " + " / ".join(f"{v:.2f} {w}" for w, v in vals))
            if lenient:
                sentences.append("Lenient (first integer of the greedy output): " + "; ".join(lenient) + ".")
    return " ".join(sentences) if sentences else "No results yet."


def write_report(results: dict, path: str | os.PathLike, *, figures: list[str] | None = None,
                 notes: str = "") -> None:
    """Writes report.md: reading, perplexity and retrieval tables, figures."""
    lines = [f"# Context extension report: {results.get('model', '')}", ""]
    lines += [f"Training length: {results.get('train_length')} tokens.", ""]
    if notes:
        lines += [notes, ""]
    lines += ["## Reading", "", reading(results), ""]
    if results.get("perplexity"):
        lines += ["## Perplexity (single forward; all positions / last quarter)", ""]
        lines += perplexity_table(results["perplexity"]) + [""]
    if results.get("perplexity_strided"):
        recs = results["perplexity_strided"]
        lines += ["## Perplexity (strided sliding window)", ""]
        lengths = sorted({r["length"] for r in recs})
        lines += ["| method | " + " | ".join(f"W={n}" for n in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for m in _methods(recs):
            cells = [(_ppl(r["nll"]) if (r := _lookup(recs, method=m, length=n)) else "") for n in lengths]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    for section, name in (("passkey", "Passkey retrieval"), ("niah", "Needle in a haystack")):
        if results.get(section):
            scorers = "strict / lenient, " if _has_lenient(results[section]) else ""
            lines += [f"## {name} (accuracy, {scorers}mean over depths; n = trials)", ""]
            lines += accuracy_table(results[section]) + [""]
    if results.get("ruler"):
        lines += ["## RULER-style suite (string_match_all, mean over trials)", ""]
        lines += ruler_table(results["ruler"]) + [""]
    for fig in figures or []:
        name = os.path.basename(fig)
        lines += [f"![{name}]({name})", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
