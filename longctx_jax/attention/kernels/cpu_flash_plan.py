"""Which build of the C++ CPU flash-attention kernel this machine runs: ISA, register tile, blocks.

One source (`cpu_flash_attention.cc`), one library per instruction set:

| isa      | vector (floats) | compiler flags               | needs (CPU flags)   |
| -------- | --------------- | ---------------------------- | ------------------- |
| portable | 4 (SSE2 / NEON) | none: any x86-64 / ARM compiler | nothing          |
| avx2     | 8               | -mavx2 -mfma                 | avx2, fma           |
| avx512   | 16              | -mavx512f -mavx2 -mfma       | avx512f, avx2, fma  |

The ISA is the best this CPU runs, or `$LONGCTX_CPU_FLASH_ISA`, or an argument. The register
tile is `rows` query rows by one 16-key panel (16 / lanes vectors per row), with `rows` the
most that fit the vector registers beside the panel's vectors and a broadcast:
`rows = min(12, (registers - vecs - 2) // vecs)` (registers: 32 for AVX-512 and ARM, 16 for
SSE2 / AVX2), i.e. 6 x 16 on AVX2, 12 x 16 on AVX-512, 2 x 16 on SSE2, 6 x 16 on NEON. The cap of
12 is measured, not derived: on a 2-core AMD EPYC with AVX-512 (Zen 4, 2026-12-05), SmolLM2's
causal 9 / 3-head layer at 8K took 0.42 s with 6-, 8- or 12-row AVX-512 tiles, 0.43 s with 16
rows and 0.50 s with 24 (the registers would hold 29), with every accumulator in a register.

The default blocks come from the caches of cpu0 (`longctx_jax.cpu`), for a reference head
dim Hr = 128 (float32):
  block_k: the block's keys and values in half of L2 (2 * block_k * Hr * 4 <= L2 / 2), and one
    row tile's probabilities plus one 16-channel slice of V in 3/4 of L1d
    ((rows + 16) * block_k * 4 <= 3 L1d / 4); rounded down to a multiple of 64, in [64, 1024];
  block_q: the [block_q, block_k] scores plus the block's queries and output in 3/8 of L2
    (block_q * (block_k + 2 Hr) * 4 <= 3 L2 / 8); rounded down to a multiple of rows, in
    [rows, 512].
On the AMD EPYC (32 KiB L1d, 512 KiB L2) this gives AVX2's 6 x 16 tile with 96 x 256 blocks,
the values the kernel was first tuned with by hand. Unknown cache sizes count as 32 KiB / 512 KiB.
The build key (`KernelBuild.tag`, part of the library's file name) holds all of these.
"""

import dataclasses
import functools
import os

from longctx_jax import cpu

ENV = "LONGCTX_CPU_FLASH_ISA"
ISAS = ("portable", "avx2", "avx512")
REFERENCE_HEAD_DIM = 128
DEFAULT_L1D = 32 << 10
DEFAULT_L2 = 512 << 10
MAX_ROWS = 12  # measured (module docstring)
PANEL = 16

# isa -> (native vector lanes, CPU flags it needs, compiler flags)
_ISA_TABLE: dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]] = {
    "portable": (4, (), ()),
    "avx2": (8, ("avx2", "fma"), ("-mavx2", "-mfma")),
    "avx512": (16, ("avx512f", "avx2", "fma"), ("-mavx512f", "-mavx2", "-mfma")),
}


@dataclasses.dataclass(frozen=True)
class KernelBuild:
    """One build of the kernel: what it is compiled for and the constants compiled into it.

    Attributes:
      isa: the instruction set it is compiled for (one of `ISAS`).
      lanes: floats per vector of the micro-kernels (4, 8 or 16); the ISA's own width unless
        a test asks for another (a 16-lane build with AVX2 flags runs AVX-512's tile logic on
        AVX2 hardware, each vector split in two by the compiler).
      rows: query rows of the register tile.
      block_q, block_k: default query / key blocks (block_k a multiple of 16).
      l1d_bytes, l2_bytes: the cache sizes the blocks were derived from.
    """

    isa: str
    lanes: int
    rows: int
    block_q: int
    block_k: int
    l1d_bytes: int
    l2_bytes: int

    @property
    def compiler_flags(self) -> tuple[str, ...]:
        """The ISA's flags plus the -D constants of the source."""
        return (*_ISA_TABLE[self.isa][2], f"-DLONGCTX_LANES={self.lanes}", f"-DLONGCTX_ROWS={self.rows}",
                f"-DLONGCTX_BLOCK_Q={self.block_q}", f"-DLONGCTX_BLOCK_K={self.block_k}")

    @property
    def tag(self) -> str:
        """Build key for file and FFI-target names, e.g. "avx2_v8r6_q96k256"."""
        return f"{self.isa}_v{self.lanes}r{self.rows}_q{self.block_q}k{self.block_k}"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready record of the build."""
        return {**dataclasses.asdict(self), "tile": f"{self.rows}x{PANEL}", "tag": self.tag}


def supported_isas(info: cpu.CpuInfo | None = None) -> tuple[str, ...]:
    """The ISAs of `ISAS` this CPU runs (portable always), narrowest first."""
    info = cpu.cpu_info() if info is None else info
    return tuple(isa for isa in ISAS if info.has(*_ISA_TABLE[isa][1]))


def choose_isa(isa: str | None = None, info: cpu.CpuInfo | None = None) -> str:
    """`isa`, else `$LONGCTX_CPU_FLASH_ISA`, else the widest ISA this CPU runs.

    Raises:
      ValueError: the name is not one of `ISAS`, or this CPU cannot run it.
    """
    info = cpu.cpu_info() if info is None else info
    source = "isa"
    if isa is None and os.environ.get(ENV):
        isa, source = os.environ[ENV].strip().lower(), f"${ENV}"
    runnable = supported_isas(info)
    if isa is None:
        return runnable[-1]
    if isa not in ISAS:
        raise ValueError(f"{source}={isa!r} is not a cpu_flash ISA; valid: {ISAS}")
    if isa not in runnable:
        missing = [flag for flag in _ISA_TABLE[isa][1] if flag not in info.flags]
        raise ValueError(
            f"{source}={isa!r} needs CPU flags {missing} that this CPU ({info.model}) lacks; it runs "
            f"{runnable} (its vector flags: {[f for f in cpu.ISA_FLAGS if f in info.flags]})"
        )
    return isa


def register_tile_rows(lanes: int, arch: str) -> int:
    """Query rows of the register tile for `lanes`-float vectors on `arch` (module docstring)."""
    registers = 32 if lanes == 16 or arch in ("aarch64", "arm64") else 16
    vecs = PANEL // lanes
    return max(1, min(MAX_ROWS, (registers - vecs - 2) // vecs))


def default_blocks(rows: int, l1d_bytes: int, l2_bytes: int) -> tuple[int, int]:
    """(block_q, block_k) for a `rows`-row tile and these caches (module docstring).

    Raises:
      ValueError: `rows` or a cache size is not positive.
    """
    if rows < 1 or l1d_bytes < 1 or l2_bytes < 1:
        raise ValueError(f"rows and cache sizes must be positive, got rows={rows}, l1d={l1d_bytes}, "
                         f"l2={l2_bytes}")
    hr = REFERENCE_HEAD_DIM
    by_l2 = l2_bytes // 2 // (2 * hr * 4)
    by_l1 = l1d_bytes * 3 // 4 // ((rows + PANEL) * 4)
    block_k = min(1024, max(64, min(by_l2, by_l1) // 64 * 64))
    block_q = l2_bytes * 3 // 8 // ((block_k + 2 * hr) * 4)
    block_q = min(512 // rows * rows, max(rows, block_q // rows * rows))
    return block_q, block_k


def plan(isa: str | None = None, *, lanes: int | None = None, info: cpu.CpuInfo | None = None) -> KernelBuild:
    """The kernel build for this machine.

    Args:
      isa: one of `ISAS`; None: `$LONGCTX_CPU_FLASH_ISA`, else the widest this CPU runs.
      lanes: vector width in floats (4, 8 or 16); None: the ISA's own.
      info: the CPU (None: this machine's).

    Returns:
      The `KernelBuild` (ISA, register tile, default blocks from the caches).

    Raises:
      ValueError: an unknown or unrunnable ISA, or lanes not in (4, 8, 16).
    """
    info = cpu.cpu_info() if info is None else info
    return _plan(choose_isa(isa, info), lanes, info)


@functools.cache
def _plan(isa: str, lanes: int | None, info: cpu.CpuInfo) -> KernelBuild:
    lanes = _ISA_TABLE[isa][0] if lanes is None else lanes
    if lanes not in (4, 8, 16):
        raise ValueError(f"lanes must be 4, 8 or 16 floats, got {lanes!r}")
    rows = register_tile_rows(lanes, info.arch)
    l1d, l2 = info.l1d_bytes or DEFAULT_L1D, info.l2_bytes or DEFAULT_L2
    block_q, block_k = default_blocks(rows, l1d, l2)
    return KernelBuild(isa=isa, lanes=lanes, rows=rows, block_q=block_q, block_k=block_k, l1d_bytes=l1d,
                       l2_bytes=l2)
