"""Markdown of the reproductions (`docs/reproductions.md`) from their committed JSON.

Every number and verdict is read from a result of `eval/claims.py: run_claim` or
`eval/passkey_claims.py: run_claim` (per-example passkey errors; the verdicts are
the ones its rules computed; `claims.check_consistent` re-derives them); a claim without a
result is listed as not run at this size, with its rules and the command that runs it.
"""

from collections.abc import Mapping, Sequence

from longctx_jax import cpu
from longctx_jax.eval.passkey_claims import accuracy, per_seed_accuracy
from longctx_jax.eval.verdicts import check_claim, parse_series

EXPECT_TEXT = {"lower": "method lower than control", "higher": "method higher than control",
               "not_higher": "method not higher than control + {margin} nats"}


def rule_text(rule: Mapping) -> str:
    """The rule in words: "method lower than control (95 % paired interval, every seed)"."""
    expect = EXPECT_TEXT[rule["expect"]].format(margin=rule["margin"])
    return f"{expect}: 95 % paired interval and every seed"


def _nll(x: float) -> str:
    return f"{x:+.4f}"


def _ppl(s: Mapping) -> str:
    return f"{s['ppl']:.3f} [{s['ppl_lo']:.3f}, {s['ppl_hi']:.3f}]"


def _is_passkey(result: Mapping) -> bool:
    return result.get("protocol") == "passkey"


def comparisons_table(result: Mapping) -> list[str]:
    """Rows: each claim's comparisons, paired Δ with its interval, per-seed Δ, rule, verdict (Δ of
    NLL in nats, or of the passkey error rate for a passkey result)."""
    delta = "Δ error rate" if _is_passkey(result) else "Δnll"
    lines = [f"| claim | comparison: method vs control | {delta} (method - control) [95 %] | "
             f"{delta} per seed | rule | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    for claim in result["claims"]:
        for c in claim["comparisons"]:
            r = c["rule"]
            seeds = ", ".join(f"{_nll(v)}" for v in c["seed_delta"].values())
            lines.append(f"| {claim['name']} | {r['name']}: `{r['method']}` vs `{r['control']}` | "
                         f"{_nll(c['delta_nll'])} [{_nll(c['delta_lo'])}, {_nll(c['delta_hi'])}] | {seeds} | "
                         f"{rule_text(r)} | {c['verdict']} |")
        lines.append(f"| **{claim['name']}** | **claim verdict** (all comparisons) | | | | "
                     f"**{claim['verdict']}** |")
    return lines


def series_table(result: Mapping) -> list[str]:
    """Rows: perplexity [95 % interval over seeds x documents] of every run, one column per series."""
    columns = list(dict.fromkeys(k.split("/", 1)[1] for k in result["summaries"]))
    columns.sort(key=lambda c: (c.split("@")[0] != "full", parse_series("x/" + c)[2]))
    runs = list(dict.fromkeys(k.split("/", 1)[0] for k in result["summaries"]))
    lines = ["| run | " + " | ".join(f"ppl {c}" for c in columns) + " |", "| --- |" + " --- |" * len(columns)]
    for run in runs:
        cells = [_ppl(result["summaries"][f"{run}/{c}"]) if f"{run}/{c}" in result["summaries"] else ""
                 for c in columns]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return lines


def passkey_table(result: Mapping) -> list[str]:
    """Rows: exact-match accuracy [95 % interval over seeds x examples] and per seed, per series."""
    lines = ["| series | exact match [95 %] | per seed |", "| --- | --- | --- |"]
    for key, summary in result["summaries"].items():
        mean, lo, hi = accuracy(summary)
        seeds = ", ".join(f"{a:.3f}" for a in per_seed_accuracy(result["series"][key]))
        lines.append(f"| `{key}` | {mean:.3f} [{lo:.3f}, {hi:.3f}] | {seeds} |")
    return lines


def passkey_setup_text(result: Mapping) -> str:
    """One paragraph: size, seeds, examples, chance, and each run's steps, final loss and device."""
    ev = result["eval"]
    examples = "/".join(str(n) for n in ev["examples_per_seed"])
    parts = [f"Size `{result['size']}` (`{result['config']}`), L = {result['train_len']} tokens, seeds "
             f"{result['seeds']}; {examples} test examples per seed and length at {ev['lengths']} tokens, "
             f"chance {ev['chance']:.4f}; one bootstrap stratum per seed, one block per example."]
    runs = []
    for spec, by_seed in result["runs"].items():
        steps = "/".join(str(s) for s in sorted({r.get("steps") for r in by_seed.values()}, key=str))
        loss = ", ".join(f"{r['final_train_loss']:.3f}" for r in by_seed.values())
        seconds = ", ".join(f"{r['train_seconds']:.0f}" for r in by_seed.values())
        devices = ", ".join(sorted({f"{r.get('device', 'device not recorded')} "
                                    f"(JAX {r.get('jax_version', '?')})" for r in by_seed.values()}))
        runs.append(f"`{spec}` {steps} steps, final train loss per seed {loss}, training seconds {seconds}, "
                    f"trained on {devices}")
    return parts[0] + " Runs: " + "; ".join(runs) + "."


def setup_text(result: Mapping) -> str:
    """One paragraph: size, seeds, evaluation windows and tokens, the runs' steps and val bits/byte."""
    ev = result["eval"]
    longest = max(ev["target_tokens"].values())
    parts = [f"Size `{result['size']}`, L = {result['train_len']}, seeds {result['seeds']}; evaluation on "
             f"{ev['windows']} windows of {ev['window_tokens']} tokens from {ev['documents']} held-out "
             f"({ev['split']}) documents, {longest:,} target tokens per seed and series at the longest "
             f"length, blocks of {result['block']} targets (one bootstrap stratum per seed and document)."]
    runs = []
    for spec, by_seed in result["runs"].items():
        bpb = [s.get("final_val_bpb") for s in by_seed.values()]
        steps = sorted({s.get("steps") for s in by_seed.values()}, key=str)
        bpb_text = ", ".join(f"{b:.3f}" for b in bpb if isinstance(b, int | float))
        runs.append(f"`{spec}` {'/'.join(str(s) for s in steps)} steps, val bits/byte {bpb_text}")
    text = parts[0] + " Runs: " + "; ".join(runs) + "."
    if result.get("seed_independent"):
        text += (" Untrained controls (one model, the same under every seed; their intervals come from "
                 f"one copy): {', '.join(f'`{k}`' for k in result['seed_independent'])}.")
    if "document_names" in ev:
        text += f" Documents: {', '.join(f'`{d}`' for d in ev['document_names'])}."
    if "machine" in result and "timing_s" in result:
        hours = sum(result["timing_s"].values()) / 3600
        text += (f" Run on {cpu.label(result['machine']['cpu'])} ({result['machine']['backend']}, JAX "
                 f"{result['machine']['jax']}) from commit {result['provenance']['git_commit'][:7]}; the "
                 f"invocation that wrote this result took {hours:.1f} h (runs it reused and scores it read "
                 "from its cache count as nothing).")
    return text


def claim_section(result: Mapping | None, claims: Sequence[Mapping], command: str) -> str:
    """A driver's section body: the claims as stated, then its tables, or "not run at this size"."""
    lines = []
    for claim in claims:
        claim = check_claim(claim)
        lines.append(f"- **{claim['name']}** ({claim['source']}): {claim['claim']}")
        for r in claim["rules"]:
            lines.append(f"  - {r['name']}: `{r['method']}` vs control `{r['control']}`; "
                         f"yes if {rule_text(r)}")
    lines.append("")
    if result is None:
        lines += [f"Not run at this size. Run: `{command}`, then copy `runs/repro/<claim>.json` to "
                  "`docs/results/repro/` and regenerate this document.", ""]
        return "\n".join(lines)
    if _is_passkey(result):
        lines += [passkey_setup_text(result), ""] + comparisons_table(result) + [""] + passkey_table(result)
        return "\n".join(lines + [""])
    lines += [setup_text(result), ""] + comparisons_table(result) + [""] + series_table(result) + [""]
    return "\n".join(lines)


def summary_table(entries: Sequence[tuple[str, Mapping | None, Sequence[Mapping], str]]) -> str:
    """Rows over every driver (name, result or None, claims, command): claim, source, the driver
    (`--claim=NAME`, which names the section and the model: `smollm2_*` are SmolLM2-135M), control,
    verdict."""
    lines = ["| claim | source | reproduction | method vs control(s) | verdict |",
             "| --- | --- | --- | --- | --- |"]
    for name, result, claims, command in entries:
        verdicts = {c["name"]: c["verdict"] for c in result["claims"]} if result else {}
        for claim in claims:
            claim = check_claim(claim)
            pairs = "; ".join(f"`{r['method']}` vs `{r['control']}`" for r in claim["rules"])
            verdict = verdicts.get(claim["name"], f"not run at this size (`{command}`)")
            lines.append(f"| {claim['name']}: {claim['claim']} | {claim['source']} | `{name}` | {pairs} | "
                         f"{verdict} |")
    return "\n".join(lines) + "\n"
