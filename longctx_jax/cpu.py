"""The machine's CPU as the kernels and the benchmarks see it: model, cores, ISA flags, caches.

`cpu_info()` reads `/proc/cpuinfo` (model name, `flags` on x86 or `Features` on ARM) and the
cache sizes of cpu0 from `/sys/devices/system/cpu/cpu0/cache/index*/{level,type,size}`, else
from `os.sysconf` (`SC_LEVEL1_DCACHE_SIZE`, ...); a size that neither gives is None. The
native kernel build (`attention/kernels/cpu_flash_plan.py`) picks its instruction set and
tile sizes from it, and every benchmark JSON records it (`bench/machine.py`).
"""

import dataclasses
import functools
import os
import platform

CPUINFO = "/proc/cpuinfo"
CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"

# The instruction-set flags a benchmark row records (the ones that change kernel speed).
ISA_FLAGS = (
    "sse2", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
    "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "fphp", "sve", "sve2",
)
_SYSCONF = {"l1d": "SC_LEVEL1_DCACHE_SIZE", "l2": "SC_LEVEL2_CACHE_SIZE", "l3": "SC_LEVEL3_CACHE_SIZE"}


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    """One machine's CPU.

    Attributes:
      model: the model name (`/proc/cpuinfo`), else `platform.processor()` / machine.
      arch: `platform.machine()` ("x86_64", "aarch64", ...).
      cores: logical cores this process may use (`os.cpu_count()`).
      flags: every feature flag the kernel reports (lower case).
      l1d_bytes, l2_bytes, l3_bytes: cache sizes of cpu0 in bytes, None where unknown.
    """

    model: str
    arch: str
    cores: int
    flags: frozenset[str]
    l1d_bytes: int | None
    l2_bytes: int | None
    l3_bytes: int | None

    def has(self, *flags: str) -> bool:
        """Whether every one of `flags` is reported."""
        return all(flag in self.flags for flag in flags)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready record: model, arch, cores, the `ISA_FLAGS` present, cache sizes."""
        return {
            "model": self.model, "arch": self.arch, "cores": self.cores,
            "isa_flags": [flag for flag in ISA_FLAGS if flag in self.flags],
            "l1d_bytes": self.l1d_bytes, "l2_bytes": self.l2_bytes, "l3_bytes": self.l3_bytes,
        }


def parse_size(text: str) -> int:
    """Bytes in a sysfs cache size ("32K", "1024K", "32M", "512").

    Raises:
      ValueError: `text` is not a number with an optional K / M / G suffix.
    """
    t = text.strip().upper()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in units else t
    if not digits.isdigit():
        raise ValueError(f"cache size {text!r} is not a number with an optional K/M/G suffix")
    return int(digits) * scale


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def _caches(cache_dir: str) -> dict[str, int | None]:
    """{"l1d", "l2", "l3"} -> bytes, from sysfs, else sysconf, else None."""
    found: dict[str, int | None] = {}
    try:
        entries = sorted(os.listdir(cache_dir))
    except OSError:
        entries = []
    for entry in entries:
        if not entry.startswith("index"):
            continue
        base = os.path.join(cache_dir, entry)
        level, kind, size = (_read(os.path.join(base, name)) for name in ("level", "type", "size"))
        if level is None or kind is None or size is None or not size.strip():
            continue
        kind = kind.strip()
        if kind == "Instruction":
            continue
        name = {"1": "l1d", "2": "l2", "3": "l3"}.get(level.strip())
        if name is not None and name not in found:
            found[name] = parse_size(size)
    for name, key in _SYSCONF.items():
        if found.get(name) is None:
            try:
                value = os.sysconf(key)
            except (ValueError, OSError):
                value = 0
            found[name] = value if value > 0 else None
    return found


def read_cpu_info(cpuinfo: str = CPUINFO, cache_dir: str = CACHE_DIR) -> CpuInfo:
    """Reads the CPU description from `cpuinfo` and the cache sizes under `cache_dir`.

    Args:
      cpuinfo: a `/proc/cpuinfo`-format file (missing: no model name and no flags).
      cache_dir: a `/sys/devices/system/cpu/cpuN/cache` directory.

    Returns:
      The `CpuInfo`.
    """
    model: str | None = None
    flags: frozenset[str] | None = None
    for line in (_read(cpuinfo) or "").splitlines():  # the first processor's entries
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model Name") and model is None and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:
            flags = frozenset(value.lower().split())
    model = model or platform.processor() or platform.machine()
    caches = _caches(cache_dir)
    return CpuInfo(model=model, arch=platform.machine(), cores=os.cpu_count() or 1,
                   flags=flags or frozenset(), l1d_bytes=caches["l1d"], l2_bytes=caches["l2"],
                   l3_bytes=caches["l3"])


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's `CpuInfo` (read once per process)."""
    return read_cpu_info()


def label(info: dict) -> str:
    """"AMD EPYC, 2 cores, AVX2" from a `CpuInfo.as_dict()` record (the docs' name of a machine)."""
    flags = set(info.get("isa_flags", ()))
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{info['model']}, {info['cores']} cores, {isa}"
