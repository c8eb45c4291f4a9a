"""Which cpu_flash build a machine gets: CPU reading, ISA choice, register tiles, cache-sized blocks.

The CPUs here are written out by hand (an AVX2 EPYC, an AVX-512 Xeon, an ARM core), so the
choices are checked for machines this one is not. The AVX-512 library is compiled (not run)
with the AVX-512 flags, and its code is checked for 512-bit registers.
"""

import dataclasses
import os
import re
import shutil
import subprocess

import pytest

from longctx_jax import cpu
from longctx_jax.attention.kernels import cpu_flash_plan, native
from longctx_jax.attention.kernels.cpu_flash_plan import KernelBuild

EPYC = cpu.CpuInfo(model="AMD EPYC", arch="x86_64", cores=2, flags=frozenset("sse2 avx avx2 fma".split()),
                   l1d_bytes=32 << 10, l2_bytes=512 << 10, l3_bytes=32 << 20)
XEON = cpu.CpuInfo(model="Intel Xeon", arch="x86_64", cores=2,
                   flags=frozenset("sse2 avx avx2 fma avx512f avx512vl avx512bw avx512dq".split()),
                   l1d_bytes=32 << 10, l2_bytes=1 << 20, l3_bytes=None)
ARM = cpu.CpuInfo(model="aarch64", arch="aarch64", cores=4, flags=frozenset("fp asimd".split()),
                  l1d_bytes=None, l2_bytes=None, l3_bytes=None)


@pytest.fixture(autouse=True)
def no_isa_override(monkeypatch):
    monkeypatch.delenv(cpu_flash_plan.ENV, raising=False)


@pytest.mark.parametrize("text,want", [("32K", 32768), ("1024K", 1 << 20), ("32M", 32 << 20), ("512", 512)])
def test_parse_size(text, want):
    assert cpu.parse_size(text) == want


def test_parse_size_refuses_garbage():
    with pytest.raises(ValueError, match="'lots'"):
        cpu.parse_size("lots")


def test_read_cpu_info_from_proc_and_sysfs(tmp_path):
    (tmp_path / "cpuinfo").write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2 fma avx512f\n\n"
        "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2 fma avx512f\n"
    )
    caches = tmp_path / "cache"
    for index, (level, kind, size) in enumerate(
        [("1", "Data", "48K"), ("1", "Instruction", "32K"), ("2", "Unified", "2048K"),
         ("3", "Unified", "105M")]
    ):
        d = caches / f"index{index}"
        d.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(value + "\n")
    info = cpu.read_cpu_info(str(tmp_path / "cpuinfo"), str(caches))
    assert info.model == "Test CPU 9000"
    assert info.has("avx2", "fma", "avx512f") and not info.has("avx512_bf16")
    assert (info.l1d_bytes, info.l2_bytes, info.l3_bytes) == (48 << 10, 2 << 20, 105 << 20)
    record = info.as_dict()
    assert record["isa_flags"] == ["sse2", "avx2", "fma", "avx512f"]
    assert record["cores"] == os.cpu_count()


def test_this_machine_is_described():
    info = cpu.cpu_info()
    assert info.cores >= 1 and info.model
    assert "portable" in cpu_flash_plan.supported_isas(info)


@pytest.mark.parametrize("info,runnable", [(EPYC, ("portable", "avx2")),
                                           (XEON, ("portable", "avx2", "avx512")), (ARM, ("portable",))])
def test_the_widest_runnable_isa_is_the_default(info, runnable):
    assert cpu_flash_plan.supported_isas(info) == runnable
    assert cpu_flash_plan.plan(info=info).isa == runnable[-1]


def test_environment_variable_forces_an_isa(monkeypatch):
    monkeypatch.setenv(cpu_flash_plan.ENV, "portable")
    assert cpu_flash_plan.plan(info=XEON).isa == "portable"
    assert cpu_flash_plan.plan("avx2", info=XEON).isa == "avx2"  # the argument wins


def test_isa_the_cpu_lacks_is_refused_naming_what_it_runs(monkeypatch):
    with pytest.raises(ValueError, match=r"'avx512'.*avx512f.*AMD EPYC.*\('portable', 'avx2'\)"):
        cpu_flash_plan.plan("avx512", info=EPYC)
    monkeypatch.setenv(cpu_flash_plan.ENV, "avx2")
    with pytest.raises(ValueError, match=r"\$LONGCTX_CPU_FLASH_ISA='avx2'.*\('portable',\)"):
        cpu_flash_plan.plan(info=ARM)


def test_unknown_isa_and_lanes_are_refused(monkeypatch):
    with pytest.raises(ValueError, match=r"'sse9'.*valid: \('portable', 'avx2', 'avx512'\)"):
        cpu_flash_plan.plan("sse9", info=EPYC)
    with pytest.raises(ValueError, match="lanes must be 4, 8 or 16 floats, got 32"):
        cpu_flash_plan.plan("avx2", lanes=32, info=EPYC)
    monkeypatch.setenv(cpu_flash_plan.ENV, "neon")
    with pytest.raises(ValueError, match=r"\$LONGCTX_CPU_FLASH_ISA='neon'"):
        cpu_flash_plan.plan(info=ARM)


@pytest.mark.parametrize("lanes,arch,rows", [(8, "x86_64", 6), (16, "x86_64", 12), (4, "x86_64", 2),
                                             (4, "aarch64", 6)])
def test_register_tile_rows_fill_the_vector_registers(lanes, arch, rows):
    # (registers - vectors per panel row - 2) // vectors per panel row, at most 12.
    assert cpu_flash_plan.register_tile_rows(lanes, arch) == rows


def test_blocks_from_caches():
    # Worked by hand from the rule in cpu_flash_plan's docstring (Hr = 128):
    # EPYC, 6 rows:  block_k = min(512K/2/1024 = 256, 24K/88 = 279) -> 256;
    #                block_q = 192K / ((256 + 256) * 4) = 96.
    assert cpu_flash_plan.default_blocks(6, 32 << 10, 512 << 10) == (96, 256)
    # Xeon, 24 rows: block_k = min(512, 24K/160 = 153) -> 128;  block_q = 384K / 1536 = 256 -> 240.
    assert cpu_flash_plan.default_blocks(24, 32 << 10, 1 << 20) == (240, 128)
    # Xeon, 12 rows: block_k = min(512, 24K/112 = 219) -> 192;  block_q = 384K / 1792 = 219 -> 216.
    assert cpu_flash_plan.default_blocks(12, 32 << 10, 1 << 20) == (216, 192)
    # A tiny cache still gives a legal tile: block_k >= 64, block_q >= rows.
    assert cpu_flash_plan.default_blocks(6, 4 << 10, 16 << 10) == (6, 64)
    with pytest.raises(ValueError, match="l2=0"):
        cpu_flash_plan.default_blocks(6, 32 << 10, 0)


def test_plans_and_build_keys():
    assert cpu_flash_plan.plan(info=EPYC) == KernelBuild("avx2", 8, 6, 96, 256, 32 << 10, 512 << 10)
    xeon = cpu_flash_plan.plan(info=XEON)
    assert (xeon.isa, xeon.lanes, xeon.rows, xeon.block_q, xeon.block_k) == ("avx512", 16, 12, 216, 192)
    assert xeon.tag == "avx512_v16r12_q216k192"
    assert "-mavx512f" in xeon.compiler_flags and "-DLONGCTX_ROWS=12" in xeon.compiler_flags
    arm = cpu_flash_plan.plan(info=ARM)  # unknown caches: 32 KiB / 512 KiB
    assert (arm.isa, arm.lanes, arm.rows, arm.block_q, arm.block_k) == ("portable", 4, 6, 96, 256)
    assert not any(flag.startswith("-m") for flag in arm.compiler_flags)
    assert arm.as_dict()["tile"] == "6x16"


def _build_in(cache, monkeypatch, build: KernelBuild) -> str:
    monkeypatch.setenv("LONGCTX_JAX_CACHE", str(cache))
    return native.library_path("cpu_flash_attention", build.compiler_flags, build.tag)


@pytest.mark.slow  # one compile of the kernel
@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")
def test_avx512_build_compiles_with_512_bit_registers(tmp_path, monkeypatch):
    # Compiled only: this machine may not run AVX-512; nothing here loads the library.
    build = cpu_flash_plan.plan("avx512", info=XEON)
    path = _build_in(tmp_path, monkeypatch, build)
    assert os.path.basename(path).startswith("cpu_flash_attention-avx512_v16r12_q216k192-")
    if shutil.which("objdump") is None:
        pytest.skip("no objdump to read the compiled instructions")
    code = subprocess.run(["objdump", "-d", path], capture_output=True, text=True, check=True).stdout
    assert "zmm" in code and "vfmadd" in code
    # Both register tiles (q k^T and p v) unrolled in full, one FMA per row, also for a tile
    # taller than the plan's: without the unroll pragmas GCC 12 kept a 24-row tile's accumulators
    # in memory (26 FMAs in the whole library).
    tall = dataclasses.replace(build, rows=24)
    code = subprocess.run(["objdump", "-d", _build_in(tmp_path, monkeypatch, tall)], capture_output=True,
                          text=True, check=True).stdout
    assert len(re.findall(r"vfmadd\w*ps\s[^\n]*zmm", code)) >= 2 * tall.rows


@pytest.mark.slow  # one compile of the kernel
@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")
def test_portable_build_uses_no_avx(tmp_path, monkeypatch):
    if cpu.cpu_info().arch != "x86_64" or shutil.which("objdump") is None:
        pytest.skip("reads x86-64 instructions with objdump")
    path = _build_in(tmp_path, monkeypatch, cpu_flash_plan.plan("portable"))
    code = subprocess.run(["objdump", "-d", path], capture_output=True, text=True, check=True).stdout
    assert "ymm" not in code and "zmm" not in code and "vfmadd" not in code
