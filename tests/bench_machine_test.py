"""Every benchmark JSON names its machine: the CPU, its ISA flags and caches, the cpu_flash build."""

import ast
import pathlib
import re

import pytest

from longctx_jax import cpu
from longctx_jax.attention.kernels import cpu_flash_plan
from longctx_jax.bench import machine

BENCH = pathlib.Path(machine.__file__).parent
NOT_BENCHMARKS = {"__init__.py", "machine.py", "published.py", "speed_tables.py"}  # helper, docs renderers


def test_record_describes_this_cpu_and_the_default_build(monkeypatch):
    monkeypatch.delenv(cpu_flash_plan.ENV, raising=False)
    record = machine.machine()
    info = cpu.cpu_info()
    assert record["cpu"] == info.as_dict()
    assert set(record["cpu"]) == {"model", "arch", "cores", "isa_flags", "l1d_bytes", "l2_bytes", "l3_bytes"}
    assert record["cpu"]["isa_flags"] == [f for f in cpu.ISA_FLAGS if f in info.flags]
    build = cpu_flash_plan.plan()
    assert record["cpu_flash"]["isa"] == build.isa == cpu_flash_plan.supported_isas()[-1]
    assert record["cpu_flash"]["tag"] == build.tag
    assert record["backend"] == "cpu" and record["device_count"] == 8


def test_record_follows_the_isa_override(monkeypatch):
    monkeypatch.setenv(cpu_flash_plan.ENV, "portable")
    assert machine.machine()["cpu_flash"]["isa"] == "portable"
    monkeypatch.setenv(cpu_flash_plan.ENV, "sse9")
    assert "'sse9' is not a cpu_flash ISA" in machine.machine()["cpu_flash"]["error"]


def test_label_names_cpu_vectors_cache_and_build():
    record = {"cpu": {"model": "AMD EPYC", "cores": 2, "isa_flags": ["sse2", "avx", "avx2", "fma"],
                      "l2_bytes": 512 << 10},
              "cpu_flash": {"isa": "avx2", "tile": "6x16", "block_q": 96, "block_k": 256}}
    assert machine.label(record) == ("AMD EPYC, 2 cores, avx2+fma, L2 512 KiB; "
                                     "cpu_flash avx2 6x16, blocks 96x256")
    bare = {"cpu": {"model": "arm", "cores": 4, "isa_flags": [], "l2_bytes": None},
            "cpu_flash": {"error": "x"}}
    assert machine.label(bare) == "arm, 4 cores, no vector flags"
    with pytest.raises(ValueError, match="not a machine"):
        machine.label({"cpu_count": 2})


@pytest.mark.parametrize("path", sorted(p.name for p in BENCH.glob("*.py") if p.name not in NOT_BENCHMARKS))
def test_every_benchmark_records_the_machine(path):
    # Its result dict holds a "machine" entry whose value is machine.machine().
    tree = ast.parse((BENCH / path).read_text(encoding="utf-8"))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and ast.unparse(node.func) == "machine.machine"]
    assert calls, f"bench/{path} writes a JSON without machine.machine()"
    keyed = [node for node in ast.walk(tree) if isinstance(node, ast.Dict)
             for key, value in zip(node.keys, node.values, strict=True)
             if isinstance(key, ast.Constant) and key.value == "machine" and value in calls]
    keywords = [node for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg == "machine"
                and node.value in calls]
    assert keyed or keywords, f"bench/{path} calls machine.machine() but does not store it under 'machine'"


TIMING_DOCS = ("docs/kv_cache.md", "docs/benchmarks.md")
TIMING_WORDS = ("tokens/s", "s/step", "cpu_flash", "torch sdpa")


def _tables(text: str) -> list[list[list[str]]]:
    """Markdown tables as rows of cells (the separator row dropped)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


@pytest.mark.parametrize("doc", TIMING_DOCS)
def test_timing_tables_name_a_listed_machine_on_every_row(doc):
    text = (BENCH.parents[1] / doc).read_text(encoding="utf-8")
    machines = set(re.findall(r"^- \*\*(\w+)\*\*:", text, flags=re.M))
    timing = [t for t in _tables(text) if any(word in " ".join(t[0]) for word in TIMING_WORDS)]
    assert timing and machines, f"{doc}: no timing table or no machine list"
    for table in timing:
        assert table[0][0] == "machine", f"{doc}: timing table without a machine column: {table[0]}"
        assert {row[0] for row in table[1:]} <= machines, f"{doc}: a row names no listed machine {machines}"
