"""report.md from a results dict: tables and a reading written from the numbers.

Nothing in the report is typed by hand: every figure is read from results.json, and the
reading paragraph states comparisons (in-length vs beyond-length perplexity of the unscaled
model, the best method at the longest length, retrieval inside vs beyond the training length)
only for the cells the results actually contain.
"""

import math
import os
from collections.abc import Sequence

import numpy as np

from longctx_jax.eval.intervals import paired_direction
from longctx_jax.eval.perplexity import summarize

RETENTION_LENGTH = 2048  # the cost of scaling where none is needed is read at lengths up to this


def _ppl(nll: float) -> str:
    return f"{math.exp(nll):.2f}"


def _lookup(records, **key):
    for r in records:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def _methods(records) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in records))


def _interval(s: dict) -> str:
    return f"{s['ppl']:.2f} [{s['ppl_lo']:.2f}, {s['ppl_hi']:.2f}]"


def perplexity_table(records) -> list[str]:
    """Markdown rows: per method and length, the perplexity of the mean NLL over documents with
    its 95 % block-bootstrap interval, and the paired NLL difference to "none" (`summarize`)."""
    summaries = summarize(records)
    lengths = sorted({s["length"] for s in summaries})
    lines = ["| method | " + " | ".join(str(n) for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for m in _methods(records):
        cells = []
        for n in lengths:
            s = _lookup(summaries, method=m, length=n)
            if s is None:
                cells.append("")
                continue
            delta = (f"; Δnll {s['delta_nll']:+.3f} [{s['delta_lo']:+.3f}, {s['delta_hi']:+.3f}]"
                     if "delta_nll" in s else "")
            cells.append(_interval(s) + delta)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def paired_verdict(s: dict) -> str:
    """The rule every comparison in a report uses, fixed before any run: "lower than" when the 95 %
    paired interval of the NLL difference lies below 0, "higher than" when above, else "not
    distinguishable from". `s` is a `summarize` row with `delta_lo` / `delta_hi`."""
    direction = paired_direction(s["delta_lo"], s["delta_hi"])
    return direction + (" from" if direction == "not distinguishable" else " than")


def paired_table(records, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Markdown rows: for each (method, reference) pair and length, perplexity of both, the paired
    NLL difference method - reference on the same documents and positions with its 95 % interval
    (`summarize(..., reference=reference)`), the ratio exp(Δnll) and `paired_verdict`."""
    lines = ["| method | vs | length | method ppl | vs ppl | Δnll [95 %] | ratio | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for method, reference in pairs:
        rows = [r for r in records if r["method"] in (method, reference)]
        summaries = summarize(rows, reference=reference)
        for s in sorted((s for s in summaries if s["method"] == method and "delta_nll" in s),
                        key=lambda s: s["length"]):
            ref = _lookup(summaries, method=reference, length=s["length"])
            lines.append(f"| {method} | {reference} | {s['length']} | {_interval(s)} | {_interval(ref)} | "
                         f"{s['delta_nll']:+.3f} [{s['delta_lo']:+.3f}, {s['delta_hi']:+.3f}] | "
                         f"x{math.exp(s['delta_nll']):.3f} | {paired_verdict(s)} |")
    return lines


def per_document_table(records) -> list[str]:
    """Markdown rows: perplexity (all / last quarter) of every document, method and length."""
    docs = list(dict.fromkeys(r.get("doc", "") for r in records))
    lines = ["| method | length | " + " | ".join(f"`{d.split(' ')[0]}`" for d in docs) + " |",
             "|---|---|" + "---|" * len(docs)]
    for m in _methods(records):
        for n in sorted({r["length"] for r in records if r["method"] == m}):
            cells = []
            for d in docs:
                r = _lookup(records, method=m, length=n, doc=d) if d else _lookup(records, method=m, length=n)
                cells.append("" if r is None else f"{_ppl(r['nll'])} / {_ppl(r['nll_last_quarter'])}")
            lines.append(f"| {m} | {n} | " + " | ".join(cells) + " |")
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
    summaries = summarize(ppl) if ppl else []
    base = sorted((r for r in summaries if r["method"] == "none"), key=lambda r: r["length"])
    inside = [r for r in base if train is None or r["length"] <= train]
    outside = [r for r in base if train is not None and r["length"] > train]
    if inside and outside:
        a, b = inside[-1], outside[-1]
        sentences.append(
            f"Without scaling, perplexity (mean NLL over {len(b['docs'])} document(s), 95 % interval) goes "
            f"from {_interval(a)} at {a['length']} tokens (inside the {train}-token training length) "
            f"to {_interval(b)} at {b['length']} tokens ({b['ppl'] / a['ppl']:.1f}x).")
    if summaries:
        longest = max(r["length"] for r in summaries)
        at_max = sorted((r for r in summaries if r["length"] == longest), key=lambda r: r["nll"])
        if len(at_max) > 1:
            ranking = ", ".join(f"{r['method']} {_interval(r)}" for r in at_max)
            sentences.append(f"At {longest} tokens the methods rank by perplexity as: {ranking}.")
            for r in at_max:
                if "delta_nll" not in r:
                    continue
                verdict = paired_verdict(r)
                sentences.append(f"{r['method']} is {verdict} none there (paired Δnll {r['delta_nll']:+.3f}, "
                                 f"95 % interval [{r['delta_lo']:+.3f}, {r['delta_hi']:+.3f}]).")
    short = [r for r in summaries if r["length"] <= RETENTION_LENGTH and "delta_nll" in r]
    if short:
        n = max(r["length"] for r in short)
        parts = [f"{r['method']} x{math.exp(r['delta_nll']):.3f} [{math.exp(r['delta_lo']):.3f}, "
                 f"{math.exp(r['delta_hi']):.3f}]" for r in short if r["length"] == n]
        sentences.append(f"Retention at {n} tokens, where no scaling is needed (perplexity relative to none, "
                         "95 % paired interval): " + "; ".join(parts) + ".")
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


def choice_table(records) -> list[str]:
    """Markdown rows: accuracy and length-normalized accuracy per method and task."""
    lines = ["| method | task | n | acc | acc_norm |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['method']} | {r['task']} | {r['num_examples']} | {r['acc']:.3f} "
                     f"[{r['acc_lo']:.3f}, {r['acc_hi']:.3f}] | {r['acc_norm']:.3f} "
                     f"[{r['acc_norm_lo']:.3f}, {r['acc_norm_hi']:.3f}] |")
    return lines


def summary_block(results: dict) -> str:
    """The short summary the README quotes: the perplexity table with intervals, the retrieval
    tables and the computed reading."""
    lines = []
    if results.get("perplexity"):
        lines += ["Perplexity, mean over documents with its 95 % block-bootstrap interval, and the paired "
                  "NLL difference to `none` on the same positions:", ""]
        lines += perplexity_table(results["perplexity"]) + [""]
    for section, name in (("passkey", "Passkey retrieval"), ("niah", "Needle in a haystack")):
        if results.get(section):
            scorers = "strict / lenient, " if _has_lenient(results[section]) else ""
            lines += [f"{name} (accuracy, {scorers}mean over depths and trials; n = trials):", ""]
            lines += accuracy_table(results[section]) + [""]
    if results.get("ruler"):
        lines += ["RULER-style suite (string_match_all, mean over trials):", ""]
        lines += ruler_table(results["ruler"]) + [""]
    lines += [reading(results), ""]
    timing, machine = results.get("timing_s") or {}, results.get("machine") or {}
    if "total_this_run" in timing and machine:
        methods = ", ".join(f"{m} {t:.0f} s" for m, t in timing.items() if m != "total_this_run")
        lines += [f"Measured: {timing['total_this_run']:.0f} s for the whole job ({methods}) on "
                  f"{machine['cpu']}, {machine['cores']} cores, {machine['platform']}, "
                  f"JAX {machine['jax']}.", ""]
    return "\n".join(lines)


def render_report(results: dict, *, figures: list[str] | None = None, notes: str = "",
                  title_level: int = 1) -> str:
    """report.md's text: reading, perplexity and retrieval tables, figures.

    Args:
      results: a results dict (results.json).
      figures: image paths, linked as given (relative to the report's directory).
      notes: a paragraph placed after the header.
      title_level: Markdown level of the title (2 when the report is embedded in another page).
    """
    h = "#" * title_level
    lines = [f"{h} Context extension report: {results.get('model', '')}", ""]
    lines += [f"Training length: {results.get('train_length')} tokens.", ""]
    if notes:
        lines += [notes, ""]
    lines += [f"{h}# Reading", "", reading(results), ""]
    if results.get("perplexity"):
        lines += [f"{h}# Perplexity (single forward; mean over documents, 95 % block-bootstrap interval; "
                  "paired NLL difference to none)", ""]
        lines += perplexity_table(results["perplexity"]) + [""]
        lines += [f"{h}# Perplexity per document (all positions / last quarter)", ""]
        lines += per_document_table(results["perplexity"]) + [""]
    if results.get("perplexity_strided"):
        recs = results["perplexity_strided"]
        lines += [f"{h}# Perplexity (strided sliding window)", ""]
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
            lines += [f"{h}# {name} (accuracy, {scorers}mean over depths; n = trials)", ""]
            lines += accuracy_table(results[section]) + [""]
    if results.get("ruler"):
        lines += [f"{h}# RULER-style suite (string_match_all, mean over trials)", ""]
        lines += ruler_table(results["ruler"]) + [""]
    if results.get("choice"):
        lines += [f"{h}# Multiple-choice tasks (accuracy / length-normalized, 95 % bootstrap interval)", ""]
        lines += choice_table(results["choice"]) + [""]
    for fig in figures or []:
        lines += [f"![{os.path.basename(fig)}]({fig})", ""]
    return "\n".join(lines)


def write_report(results: dict, path: str | os.PathLike, *, figures: list[str] | None = None,
                 notes: str = "") -> None:
    """Writes report.md (`render_report`), linking the figures by file name."""
    text = render_report(results, figures=[os.path.basename(f) for f in figures or []], notes=notes)
    with open(path, "w") as f:
        f.write(text)
