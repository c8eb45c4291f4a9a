"""The machine a benchmark ran on, recorded in every benchmark JSON (`"machine"`).

CPU numbers hold for one machine: the same benchmark gave 1.24x transformers on a 2-core AVX2
EPYC and 0.72x on a 2-core AVX-512 Xeon (issue #20). So every `bench/*.py` result carries
`machine()`: the CPU (model, arch, cores, ISA flags, L1d / L2 / L3 sizes, from
`longctx_jax.cpu`), the cpu_flash build a call with default arguments runs (ISA, register
tile, default blocks: `cpu_flash_plan.plan()`), the JAX backend and device, and the JAX
version; docs tables name each row's machine with `label()`. Each result also carries
`longctx_jax.provenance.provenance()`: when and from which code it was measured.
"""


import jax

from longctx_jax import cpu
from longctx_jax.attention.kernels import cpu_flash_plan


def machine() -> dict[str, object]:
    """JSON-ready description of this machine and the kernel build a benchmark here runs.

    Returns:
      {"cpu": `CpuInfo.as_dict()`, "cpu_flash": `KernelBuild.as_dict()` (or {"error": ...}
      when `$LONGCTX_CPU_FLASH_ISA` names an ISA this CPU cannot run), "backend", "device",
      "device_count", "jax"}.
    """
    try:
        build: dict[str, object] = cpu_flash_plan.plan().as_dict()
    except ValueError as error:
        build = {"error": str(error)}
    devices = jax.devices()
    return {
        "cpu": cpu.cpu_info().as_dict(),
        "cpu_flash": build,
        "backend": jax.default_backend(),
        "device": str(devices[0].device_kind),
        "device_count": len(devices),
        "jax": jax.__version__,
    }


def label(record: dict[str, object]) -> str:
    """One line naming a `machine()` record's CPU for a docs table row.

    Example: "AMD EPYC, 2 cores, avx2+fma, L2 512 KiB; cpu_flash avx2 6x16, blocks 96x256".

    Raises:
      ValueError: `record` has no "cpu" entry (not a `machine()` record).
    """
    if not isinstance(record, dict) or not isinstance(record.get("cpu"), dict):
        raise ValueError(f"not a machine() record (needs a 'cpu' entry): {record!r:.200}")
    c = record["cpu"]
    vector = [f for f in c.get("isa_flags", []) if f in ("avx2", "fma", "avx512f", "asimd", "sve")]
    text = f"{c['model']}, {c['cores']} cores, {'+'.join(vector) or 'no vector flags'}"
    if c.get("l2_bytes"):
        text += f", L2 {c['l2_bytes'] >> 10} KiB"
    build = record.get("cpu_flash") or {}
    if "isa" in build:
        text += f"; cpu_flash {build['isa']} {build['tile']}, blocks {build['block_q']}x{build['block_k']}"
    return text
