"""The Triton kernels inside a lowered JAX program, compiled to PTX and measured, without a GPU.

`jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",))` works on any machine; each
Pallas Triton kernel appears in it as a `__gpu$xla.gpu.triton` custom call whose backend
config carries the Triton module (MLIR bytecode), its warps and pipeline stages. The JAX
CUDA plugin (`pip install -e ".[accelerator-check]"`, jax-cuda13-plugin pinned to the
installed jaxlib) registers the Triton-to-PTX compiler that XLA would run on a GPU; it
needs no GPU, and reports the kernel's dynamic shared memory. `ptxas -v` (from the
nvidia-cuda-nvcc wheel of the same extra, or PATH) assembles the PTX and reports registers
and spills per thread. The compiler links libdevice from /usr/local/cuda when that exists and
otherwise from the wheel's nvvm/ (checked with /usr/local/cuda hidden), so the extra alone
suffices.

    lowered = jax.jit(step).trace(*avals).lower(lowering_platforms=("cuda",))
    for module in triton_modules(lowered):
        kernel = compile_module(module, "sm90")   # .smem_bytes, .registers, .spill_bytes
"""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jax
from jax._src.lib import triton
from jax._src.lib.mlir import ir

ARCHS = {"sm80": "8.0", "sm90": "9.0"}
MAX_REGISTERS_PER_THREAD = 255
REGISTERS_PER_SM = 65_536  # a thread block's registers cannot exceed one SM's file
_TRITON_CALL = "__gpu$xla.gpu.triton"


@dataclasses.dataclass(frozen=True)
class TritonModule:
    """One Triton kernel of a lowered program, as XLA would receive it."""

    name: str
    bytecode: bytes
    num_warps: int
    num_stages: int


@dataclasses.dataclass(frozen=True)
class CompiledKernel:
    """A Triton module compiled for one GPU architecture."""

    name: str
    arch: str
    num_warps: int
    smem_bytes: int  # dynamic shared memory per thread block (Triton's figure)
    registers: int  # per thread (ptxas)
    spill_bytes: int  # spill stores per thread (ptxas)
    ptx: str


def triton_modules(lowered) -> list[TritonModule]:
    """Every Pallas Triton kernel in a `jax.stages.Lowered` lowered for "cuda", in program order."""
    found = []

    def walk(op) -> None:
        for region in op.regions:
            for block in region.blocks:
                for child in block.operations:
                    if child.operation.name == "stablehlo.custom_call":
                        target = ir.StringAttr(child.attributes["call_target_name"]).value
                        if target == _TRITON_CALL:
                            config = ir.DictAttr(child.attributes["mhlo.backend_config"])
                            found.append(TritonModule(
                                name=ir.StringAttr(config["name"]).value,
                                bytecode=ir.StringAttr(config["ir"]).value_bytes,
                                num_warps=ir.IntegerAttr(config["num_warps"]).value,
                                num_stages=ir.IntegerAttr(config["num_stages"]).value,
                            ))
                    walk(child.operation)

    walk(lowered.compiler_ir("stablehlo").operation)
    return found


def have_cuda_compiler() -> bool:
    """Whether the JAX CUDA plugin registered its Triton compiler (the `accelerator-check` extra)."""
    jax.devices()  # plugins register their compilers when the backends start
    return triton.has_compilation_handler("CUDA")


def ptxas_path() -> str:
    """ptxas from the nvidia-cuda-nvcc wheel beside this Python, else from PATH."""
    wheel = os.path.join(sys.prefix, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}",
                         "site-packages", "nvidia", "cu13", "bin", "ptxas")
    if os.access(wheel, os.X_OK):
        return wheel
    found = shutil.which("ptxas")
    if found is None:
        raise FileNotFoundError("ptxas not found: install the accelerator-check extra (nvidia-cuda-nvcc)")
    return found


def compile_module(module: TritonModule, arch: str) -> CompiledKernel:
    """Triton -> PTX with the plugin's compiler, then `ptxas -v` for registers and spills.

    Args:
      module: from `triton_modules`.
      arch: "sm80" (A100) or "sm90" (H100).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    if not have_cuda_compiler():
        raise RuntimeError('no Triton compiler for CUDA: pip install -e ".[accelerator-check]"')
    result = triton.compile(
        "CUDA", module.bytecode, ARCHS[arch],
        num_warps=module.num_warps, num_ctas=1, num_stages=module.num_stages,
    )
    target = re.search(r"^\.target\s+(sm_\w+)", result.asm, re.MULTILINE)
    if target is None:
        raise RuntimeError(f"{module.name}: the compiler's PTX names no .target")
    with tempfile.TemporaryDirectory() as tmp:
        ptx_file = os.path.join(tmp, "kernel.ptx")
        with open(ptx_file, "w") as f:
            f.write(result.asm)
        cubin = os.path.join(tmp, "kernel.cubin")
        command = [ptxas_path(), "-v", f"-arch={target.group(1)}", ptx_file, "-o", cubin]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed on {module.name} for {arch}:\n{done.stderr}")
    registers = re.search(r"Used (\d+) registers", done.stderr)
    spills = re.search(r"(\d+) bytes spill stores", done.stderr)
    if registers is None or spills is None:
        raise RuntimeError(f"unexpected ptxas -v output for {module.name}:\n{done.stderr}")
    return CompiledKernel(
        name=module.name, arch=arch, num_warps=module.num_warps, smem_bytes=int(result.smem_bytes),
        registers=int(registers.group(1)), spill_bytes=int(spills.group(1)), ptx=result.asm,
    )
