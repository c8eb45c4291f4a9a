"""Docs tables generated from committed results (and code tables): one renderer per block, one check.

A Markdown file quotes a result only inside a generated block,

    <!-- generated:NAME -->
    ...rendered from docs/results/...json...
    <!-- /generated:NAME -->

whose body is `BLOCKS[NAME]()` exactly. `publish()` rewrites every block of every file in
`DOC_FILES` from the committed JSON (`python -m experiments.publish_docs --config
configs/publish_docs.py`); `stale_blocks()` lists the blocks whose text differs from what the JSON
gives, and `tests/docs_results_test.py` fails on any. Verdicts and "x times" sentences inside a
block are computed by the renderer (`report.reading`), never typed.
"""

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from longctx_jax import config_cli
from longctx_jax.atomic import write_atomically
from longctx_jax.bench import bandwidth, decode_attention, gemm, gpu, memory, speed_tables
from longctx_jax.eval import finetune_claims, passkey_claims, repro_report
from longctx_jax.eval.claims import CLAIMS as REPRO_DRIVERS
from longctx_jax.eval.passkey_claims import DRIVERS as PASSKEY_DRIVERS
from longctx_jax.eval.report import paired_table, render_report, summary_block
from longctx_jax.models.hf_architectures import markdown_table
from longctx_jax.search import longrope_claim

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
DOC_FILES = ("README.md", "docs/extension_report.md", "docs/benchmarks.md", "docs/finetuning.md",
             "docs/huggingface.md", "docs/reproductions.md", "docs/kv_cache.md")
REPRO = RESULTS / "repro"  # one <driver>.json per decoder reproduction (`experiments/reproduce.py`)
EXTEND_RUN = RESULTS / "extend_smollm2" / "results.json"
EXTEND_DYNAMIC_RUN = RESULTS / "extend_smollm2_dynamic" / "results.json"  # the default + "dynamic"
EXTEND_FIGURES = ("docs/figures/extend_smollm2_ppl_vs_length.png",
                  "docs/figures/extend_smollm2_passkey.png")
PATTERN_RUNS = ("rope", "longformer", "bigbird", "longnet")
FINETUNE = RESULTS / "finetune_smollm2"  # results.json of `extend :finetuned` + one directory per run
BENCH_FORWARD = RESULTS / "bench_forward"  # <date>-<machine>.json of `experiments.bench_forward`
BENCH_ATTENTION_GQA = RESULTS / "bench_attention_gqa"  # SmolLM2's 9 / 3 heads, `bench_attention`
# `experiments.bench_gemm`: the runs the docs show, one table each (the folder also keeps earlier
# runs); ZEN4's 2026-12-05 run is cpu_blas on OpenBLAS's threads, 2026-12-06 on XLA's (row blocks)
BENCH_GEMM = (RESULTS / "bench_gemm" / "2026-11-28-epyc-cpu-blas.json",
              RESULTS / "bench_gemm" / "2026-12-05-zen4.json",
              RESULTS / "bench_gemm" / "2026-12-06-zen4-row-blocks.json")
BENCH_DECODE_ATTENTION = RESULTS / "bench_decode_attention"  # `experiments.bench_decode_attention`
BENCH_BANDWIDTH = RESULTS / "bench_bandwidth"  # `experiments.bench_bandwidth`, <date>-<machine>.json
BENCH_GPU = RESULTS / "bench_gpu" / "2026-11-28-h200.json"  # `experiments.bench_gpu` on a lent H200

_BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)"
                    r"(<!-- /generated:(?P=name) -->)", re.S)


def load(path: str | os.PathLike) -> dict:
    """A committed results JSON."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def finetune_labels() -> dict[str, str]:
    """{fine-tuning config variant: its label in results.json}, read from the config that compared
    them (`configs/extend_smollm2.py:finetuned`, `finetuned = {label: "runs/ft_<variant>"}`)."""
    config = config_cli.load_config(f"{ROOT / 'configs' / 'extend_smollm2.py'}:finetuned")
    return {os.path.basename(str(path)).removeprefix("ft_"): label
            for label, path in config.finetuned.items()}


def finetune_pairs() -> tuple[tuple[str, str], ...]:
    """(fine-tune label, the same scaling untrained) per run: the scaling is the run's own rope_type."""
    return tuple((label, load(FINETUNE / variant / "summary.json")["rope_scaling"]["rope_type"])
                 for variant, label in finetune_labels().items())


def extend_summary() -> str:
    """README: the main job's perplexity table with intervals, retrieval table and reading."""
    return summary_block(load(EXTEND_RUN))


def extend_report() -> str:
    """docs/extension_report.md: the whole report of the committed main-job run."""
    results = load(EXTEND_RUN)
    figures = [f for f in EXTEND_FIGURES if (ROOT / f).exists()]
    notes = results.get("notes", "")
    return render_report(results, figures=[os.path.relpath(ROOT / f, ROOT / "docs") for f in figures],
                         notes=notes, title_level=2)


def extend_dynamic() -> str:
    """docs/extension_report.md: the run of the default with Dynamic NTK added (tables + reading)."""
    return summary_block(load(EXTEND_DYNAMIC_RUN))


def _metrics(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def finetune_runs() -> str:
    """docs/finetuning.md: the measured fine-tuning runs (from their committed summary.json,
    config.json and metrics.jsonl): recipe, tokens, loss, throughput and peak memory."""
    lines = ["| run | rope_scaling | trained / total params | steps x tokens "
             "| train loss, first -> last step | validation loss after | tokens/s (median of steps 2..) "
             "| peak host memory |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for variant, label in finetune_labels().items():
        run = FINETUNE / variant
        summary, config = load(run / "summary.json"), load(run / "config.json")
        records = _metrics(run / "metrics.jsonl")
        median = float(np.median([r["tokens_per_sec"] for r in records[1:]]))  # the first compiles
        peak = max(r.get("peak_host_gib", 0.0) for r in records)
        scaling = ", ".join(f"{k}={v}" for k, v in summary["rope_scaling"].items())
        lines.append(
            f"| `{variant}` ({label}) | {scaling} | "
            f"{summary['trainable_params']:,} / {summary['num_params']:,} | "
            f"{summary['steps']} x {config['data']['batch_size'] * config['data']['seq_len']} | "
            f"{records[0]['train_loss']:.3f} -> {records[-1]['train_loss']:.3f} | "
            f"{summary['final_val_loss']:.3f} | {median:.1f} | {peak:.1f} GiB |")
    return "\n".join(lines) + "\n"


def finetune_comparison() -> str:
    """docs/finetuning.md: perplexity of the base under none / PI / YaRN and of the fine-tunes on
    held-out documents, and each fine-tune against its scaling without training (paired)."""
    results = load(FINETUNE / "results.json")
    lines = [summary_block(results), "Each fine-tune against the same scaling without fine-tuning "
             "(paired on the same documents and positions):", ""]
    lines += paired_table(results["perplexity"], finetune_pairs())
    return "\n".join(lines) + "\n"


def pattern_table() -> str:
    """docs/benchmarks.md: validation bits per byte of the attention-pattern training runs."""
    lines = ["| variant | attention pattern | packed documents | validation bits per byte | unigram |",
             "| --- | --- | --- | --- | --- |"]
    for name in PATTERN_RUNS:
        run = load(RESULTS / "tiny_patterns" / f"{name}.json")
        pattern = run["attention"]["pattern"]
        options = run["attention"]["pattern_options"] or {}
        described = pattern + (" " + ", ".join(f"{k}={v}" for k, v in options.items()) if options else "")
        lines.append(f"| `{run['variant']}` | {described} | {'yes' if run['use_segment_ids'] else 'no'} | "
                     f"{run['final_val_bpb']:.3f} | {run['unigram_bpb']:.2f} |")
    return "\n".join(lines) + "\n"


def memory_table() -> str:
    """docs/finetuning.md: compiled per-device memory of the FSDP x ring train step."""
    return memory.memory_table(memory.load_results(str(RESULTS / "memory"))) + "\n"


def bench_forward() -> str:
    """docs/kv_cache.md: SmolLM2 prefill / decode tokens/s against transformers, one row per run."""
    return speed_tables.forward_table(speed_tables.runs(BENCH_FORWARD))


def bench_decode_bandwidth() -> str:
    """docs/kv_cache.md: read bandwidth and each committed decode row's share of it."""
    measured = {name: result for name, _, result in speed_tables.runs(BENCH_BANDWIDTH)}
    return bandwidth.decode_table(measured, speed_tables.runs(BENCH_FORWARD))


def bench_decode_attention() -> str:
    """docs/kv_cache.md: a decode step's attention over 30 layers' caches against the read floor."""
    return decode_attention.table(speed_tables.runs(BENCH_DECODE_ATTENTION))


def bench_attention_gqa() -> str:
    """docs/benchmarks.md: one causal SmolLM2 attention layer, cpu_flash vs torch sdpa, per run."""
    return speed_tables.attention_table(speed_tables.runs(BENCH_ATTENTION_GQA))


def bench_gemm() -> str:
    """docs/benchmarks.md: XLA:CPU vs torch GEMM rates per XLA flag setting."""
    return "\n".join(gemm.table(load(path)) for path in BENCH_GEMM)


def bench_gpu() -> str:
    """docs/benchmarks.md: Pallas flash vs cuDNN vs XLA on a GPU, after the correctness check."""
    return gpu.table(load(BENCH_GPU))


def hf_architectures() -> str:
    """docs/huggingface.md: the HF architecture table, from the code's table (no results file)."""
    return markdown_table().rstrip("\n") + "\n"


def repro_result(name: str) -> dict | None:
    """The committed result of reproduction driver `name`, or None if it has not run at this size."""
    path = REPRO / f"{name}.json"
    return load(path) if path.exists() else None


# decoder perplexity claims, then the pretrained model's fine-tuning claims, then passkey claims
REPRO_NAMES = (*REPRO_DRIVERS, *finetune_claims.DRIVERS, *PASSKEY_DRIVERS)


def repro_claims(name: str) -> list[dict]:
    """The claims (with their rules) of driver `name`, read from its config file."""
    if name in REPRO_DRIVERS:
        spec = REPRO_DRIVERS[name].config
    elif name in finetune_claims.DRIVERS:
        spec = finetune_claims.config_spec(name)
    else:
        spec = passkey_claims.config_spec(name)
    file, _, variant = spec.partition(":")
    config = config_cli.load_config(f"{ROOT / 'configs' / file}.py:{variant}")
    return [dict(c) for c in config.claims]


LONGROPE = REPRO / "longrope_smollm2.json"  # summary.json of `experiments.longrope_search` (:cpu16k)
LONGROPE_BLOCKS = REPRO / "longrope_smollm2_test_blocks.json"  # its test_blocks.json: the scored blocks
LONGROPE_COMMAND = ("python -m experiments.longrope_search --config "
                    "configs/longrope_search_smollm2.py:cpu16k "
                    "--config.workdir=runs/longrope_smollm2_cpu16k")


def repro_longrope() -> str:
    """docs/reproductions.md: the LongRoPE claim on held-out documents, from the committed run."""
    if not LONGROPE.exists():
        return f"Not run at this size. Command: `{LONGROPE_COMMAND}`.\n"
    return longrope_claim.report(load(LONGROPE))


def _repro_command(name: str) -> str:
    return f"python -m experiments.reproduce --claim={name}"


def repro_summary() -> str:
    """docs/reproductions.md: every decoder claim, its control(s) and its computed verdict."""
    return repro_report.summary_table([(n, repro_result(n), repro_claims(n), _repro_command(n))
                                       for n in REPRO_NAMES])


def repro_section(name: str) -> Callable[[], str]:
    """docs/reproductions.md: the claims, rules, comparisons and perplexity table of driver `name`."""
    def render() -> str:
        return repro_report.claim_section(repro_result(name), repro_claims(name), _repro_command(name))
    return render


BLOCKS: dict[str, Callable[[], str]] = {
    "repro-summary": repro_summary,
    **{f"repro-{name}": repro_section(name) for name in REPRO_NAMES},
    "repro-longrope": repro_longrope,
    "extend-summary": extend_summary,
    "extend-report": extend_report,
    "extend-dynamic": extend_dynamic,
    "pattern-table": pattern_table,
    "memory-table": memory_table,
    "bench-forward": bench_forward,
    "bench-decode-bandwidth": bench_decode_bandwidth,
    "bench-decode-attention": bench_decode_attention,
    "bench-attention-gqa": bench_attention_gqa,
    "bench-gemm": bench_gemm,
    "bench-gpu": bench_gpu,
    "hf-architectures": hf_architectures,
    "finetune-runs": finetune_runs,
    "finetune-comparison": finetune_comparison,
}


def blocks_in(text: str) -> list[tuple[str, str]]:
    """(name, body) of every generated block of a Markdown text."""
    return [(m["name"], m["body"]) for m in _BLOCK.finditer(text)]


def render(text: str) -> str:
    """`text` with every generated block's body replaced by its renderer's output.

    Raises:
      ValueError: a block names no renderer (valid names: `BLOCKS`).
    """
    def body(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise ValueError(f"generated block {name!r} has no renderer; valid: {sorted(BLOCKS)}")
        out = BLOCKS[name]()
        return match.group(1) + out + ("" if out.endswith("\n") else "\n") + match.group(4)

    return _BLOCK.sub(body, text)


def stale_blocks(files: tuple[str, ...] = DOC_FILES) -> list[str]:
    """"file: block" for every generated block whose text differs from its JSON's rendering."""
    stale = []
    for name in files:
        text = (ROOT / name).read_text(encoding="utf-8")
        fresh = dict(blocks_in(render(text)))
        stale += [f"{name}: {block}" for block, body in blocks_in(text) if fresh[block] != body]
    return stale


def publish(files: tuple[str, ...] = DOC_FILES) -> list[str]:
    """Rewrites every generated block of `files` from the committed JSON; returns the changed files."""
    changed = []
    for name in files:
        path = ROOT / name
        text = path.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            write_atomically(str(path), new)
            changed.append(name)
    return changed
