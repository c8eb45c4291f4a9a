"""The kernel ring attention runs on each K/V shard, per platform.

It must return the log-sum-exp the ring merges and have a backward from a saved (out, lse),
which the ring calls with the global output and lse (`dispatch.Implementation.backward`).
The platform is the mesh's (an `AbstractMesh`'s `abstract_device`), so a CPU lowering for
"cuda" picks the GPU kernel.
"""

import jax

from longctx_jax.attention import dispatch
from longctx_jax.attention.spec import AttentionSpec

GPU_PLATFORMS = ("gpu", "cuda")
# Inner kernels per platform, the first that takes the shard's spec wins.
_INNER_CANDIDATES = {"gpu": ("flash", "blockwise"), "cuda": ("flash", "blockwise"), "tpu": ("blockwise",)}
_CPU_CANDIDATES = ("cpu_flash", "blockwise")
_POSITIONS = frozenset({"q_positions", "k_positions"})


def ring_inner(platform: str, spec: AttentionSpec, *, own_shard: bool = False) -> str:
    """The registry implementation the ring runs per K/V shard on `platform`.

    Args:
      platform: "cpu", "gpu" / "cuda" or "tpu" (a mesh's device platform).
      spec: the ring call's spec.
      own_shard: the device's own shard under a contiguous layout, attended at default
        positions (otherwise the inner call gets explicit positions).

    Returns:
      The first of the platform's candidates (GPU: flash, blockwise; CPU: cpu_flash,
      blockwise; TPU: blockwise) that has an lse variant and a backward from (out, lse),
      can be imported and takes the block's spec fields.
    """
    fields = spec.given() | (frozenset() if own_shard else _POSITIONS)
    for name in _INNER_CANDIDATES.get(platform, _CPU_CANDIDATES):
        entry = dispatch.entry(name)
        if entry.lse_target is None or entry.backward_target is None:
            continue
        try:
            if not fields & entry.unsupported:
                return name
        except ImportError:
            continue
    return "blockwise"


def check_inner(name: str, spec: AttentionSpec) -> None:
    """Raises ValueError unless `name` can be the ring's per-shard kernel for `spec`."""
    entry = dispatch.entry(name)
    usable = sorted(n for n, e in dispatch.REGISTRY.items()
                    if e.lse_target is not None and e.backward_target is not None)
    if name not in usable:
        raise ValueError(f"inner={name!r} has no lse variant and backward from (out, lse); valid: {usable}")
    refused = sorted((spec.given() | _POSITIONS) & entry.unsupported)
    if refused:
        raise ValueError(f"inner={name!r} cannot take {refused} (shards attend at explicit positions)")


def platform_of(mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh) -> str:
    """The mesh's device platform ("cpu", "gpu", "cuda", "tpu"); the default backend if unknown."""
    abstract = mesh if isinstance(mesh, jax.sharding.AbstractMesh) else mesh.abstract_mesh
    device = getattr(abstract, "abstract_device", None)
    return getattr(device, "platform", None) or jax.default_backend()
