"""Triton launch plan for the flash kernels: block sizes, warps and pipelining per kernel.

A kernel compiled for a GPU must fit the shared memory of one thread block (sm80, A100:
166,912 B; sm90, H100: 232,448 B) and keep its float32 accumulators in registers. Both
are decided here, before lowering, from a small model of what Triton puts where.

Shared memory (bytes, e = element size of q/k/v, s = pipeline stages): Triton's software
pipeliner keeps s copies of every tile a loop loads for a dot, tiles loaded once before
the loop stay resident, and one `[block_q, block_k]` tile is scratch for a transposed
operand:
    forward  (loop over key blocks):    e (2 s bk H + bq H + bq bk)
    dq       (loop over key blocks):    e (2 s bk H + 2 bq H + bq bk)
    dkv      (loop over query tiles):   e (2 s bq H + 2 bk H + bq bk) + 8 s bq   (lse, delta rows)
plus 1 KiB for scalars and segment / position rows. Compiled with Triton (jax-cuda13-plugin
0.10.2) this is exact for sm90 and an upper bound for sm80 (which buffers less); the
accelerator check (`tests/accelerator_check_test.py`) compares it with the compiler's
figure for every configuration it compiles, so a compiler change that breaks the model
fails there rather than on a GPU.

Registers: a thread block of w warps (32 w threads) spreads its float32 accumulators
(forward o and dq `[bq, H]`; dkv dk and dv `[bk, H]`) and its `[bq, bk]` logit-sized tiles
(2 in the forward, 4 in the backward) over its threads; keeping that at <= 128 floats per
thread leaves the rest of the 255 registers for operands and addresses. Past it ptxas
spills to local memory (measured: dq at H = 64 with 4 warps spills 256 B with every mask
feature on; H = 256 with 4 warps and 64-row blocks spills kilobytes).

The dK/dV kernel loops over (query block, query head) pairs, so s copies of one head's q
and dO tiles are buffered whatever G is; the smem model has no G in it.
"""

import dataclasses

SMEM_LIMITS = {"sm80": 166_912, "sm90": 232_448}  # max dynamic shared memory per block (opt-in)
SMEM_BUDGET = min(SMEM_LIMITS.values())  # one plan for every supported GPU
MAX_LIVE_FLOATS_PER_THREAD = 128  # of the 255 registers a thread may have
MAX_WARPS = 8
NUM_STAGES = 2
KERNELS = ("forward", "dq", "dkv")
_MIN_BLOCK = 16  # smallest tile Triton's dot takes


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    """How one kernel is compiled: its tile sizes, warps per block and pipeline stages."""

    block_q: int
    block_k: int
    num_warps: int
    num_stages: int


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """A `KernelLaunch` for each of the forward, dQ and dK/dV kernels."""

    forward: KernelLaunch
    dq: KernelLaunch
    dkv: KernelLaunch


def smem_bytes(kernel: str, block_q: int, block_k: int, head_dim: int, itemsize: int, num_stages: int) -> int:
    """Modelled shared memory of `kernel` (see the module docstring), in bytes."""
    bq, bk, H, e, s = block_q, block_k, head_dim, itemsize, num_stages
    if kernel == "forward":
        tiles = 2 * s * bk * H + bq * H + bq * bk
        rows = 0
    elif kernel == "dq":
        tiles = 2 * s * bk * H + 2 * bq * H + bq * bk
        rows = 0
    elif kernel == "dkv":
        tiles = 2 * s * bq * H + 2 * bk * H + bq * bk
        rows = 8 * s * bq
    else:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return e * tiles + rows + 1024


def live_floats_per_thread(kernel: str, block_q: int, block_k: int, head_dim: int, num_warps: int) -> float:
    """float32 values each thread keeps live: accumulators plus the `[bq, bk]` logit-sized tiles.

    Accumulators are o / dq `[bq, H]` (forward, dq) or dk and dv `[bk, H]` (dkv); the forward
    holds two `[bq, bk]` tiles (s, p), the backward four (s, p, dp, ds).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    accumulators = 2 * block_k * head_dim if kernel == "dkv" else block_q * head_dim
    tiles = (2 if kernel == "forward" else 4) * block_q * block_k
    return (accumulators + tiles) / (32 * num_warps)


def plan_kernel(
    kernel: str, block_q: int, block_k: int, head_dim: int, itemsize: int, smem_budget: int = SMEM_BUDGET
) -> KernelLaunch:
    """The largest tiles (at most the requested ones) that fit the smem budget and registers.

    Warps grow (4 -> 8) before the accumulator's block shrinks; the pipelined tile's block
    (keys for forward / dq, queries for dkv) shrinks before the resident one.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    bq, bk = block_q, block_k
    pipelined, resident = ("block_q", "block_k") if kernel == "dkv" else ("block_k", "block_q")
    while True:
        warps = 4
        def too_many(warps: int) -> bool:
            return live_floats_per_thread(kernel, bq, bk, head_dim, warps) > MAX_LIVE_FLOATS_PER_THREAD

        while warps < MAX_WARPS and too_many(warps):
            warps *= 2
        sizes = {"block_q": bq, "block_k": bk}
        if too_many(warps):
            shrink = resident
        elif smem_bytes(kernel, bq, bk, head_dim, itemsize, NUM_STAGES) > smem_budget:
            shrink = pipelined if sizes[pipelined] > _MIN_BLOCK else resident
        else:
            return KernelLaunch(block_q=bq, block_k=bk, num_warps=warps, num_stages=NUM_STAGES)
        if sizes[shrink] <= _MIN_BLOCK:
            raise ValueError(
                f"no {kernel} tiling of head_dim={head_dim} (itemsize {itemsize}) fits {smem_budget} bytes "
                f"of shared memory; largest head_dim supported is 256"
            )
        sizes[shrink] //= 2
        bq, bk = sizes["block_q"], sizes["block_k"]


def plan(
    block_q: int, block_k: int, head_dim: int, itemsize: int, smem_budget: int = SMEM_BUDGET
) -> LaunchPlan:
    """`plan_kernel` for the three kernels of one flash-attention call."""
    return LaunchPlan(
        **{name: plan_kernel(name, block_q, block_k, head_dim, itemsize, smem_budget) for name in KERNELS}
    )
