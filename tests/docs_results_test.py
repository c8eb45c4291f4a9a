"""Tables in the docs equal the committed JSON they quote (docs/results/)."""

import json
import pathlib

from longctx_jax.bench import memory

ROOT = pathlib.Path(__file__).resolve().parents[1]
PATTERN_RUNS = ("rope", "longformer", "bigbird", "longnet")


def pattern_table() -> str:
    """The attention-pattern training table of docs/benchmarks.md, rendered from its JSON."""
    lines = ["| variant | attention pattern | packed documents | validation bits per byte | unigram |",
             "| --- | --- | --- | --- | --- |"]
    for name in PATTERN_RUNS:
        run = json.loads((ROOT / "docs/results/tiny_patterns" / f"{name}.json").read_text())
        pattern = run["attention"]["pattern"]
        options = run["attention"]["pattern_options"] or {}
        described = pattern + (" " + ", ".join(f"{k}={v}" for k, v in options.items()) if options else "")
        lines.append(f"| `{run['variant']}` | {described} | {'yes' if run['use_segment_ids'] else 'no'} | "
                     f"{run['final_val_bpb']:.3f} | {run['unigram_bpb']:.2f} |")
    return "\n".join(lines)


def test_pattern_table_in_benchmarks_equals_its_json():
    doc = (ROOT / "docs/benchmarks.md").read_text()
    assert pattern_table() in doc, "regenerate the table with tests/docs_results_test.py:pattern_table()"


def test_memory_table_in_finetuning_equals_its_json():
    results = memory.load_results(str(ROOT / "docs/results/memory"))
    assert [r["num_devices"] for r in results] == [8, 64, 256]
    assert len({(row["model"], row["seq_len"]) for r in results for row in r["rows"]}) == 4
    doc = (ROOT / "docs/finetuning.md").read_text()
    table = memory.memory_table(results)
    assert f"{memory.TABLE_START}\n{table}\n{memory.TABLE_END}" in doc, (
        "regenerate: python -m experiments.bench_memory --config configs/bench_memory.py:table")
