"""The tiny decoder trained with ring attention on a (data x sequence) mesh.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    python -m experiments.train --config configs/train_ring.py --config.workdir=runs/train_ring

On 8 CPU devices (fake, as above) or 8 accelerators: batch split 2 ways, each sequence 4 ways
in the zig-zag layout. Other shapes: `--config.mesh.data=1 --config.mesh.sequence=8`; the
contiguous layout: `--config.mesh.layout=natural`; multi-host: `--config.mesh.distributed=True`
(see docs/distributed.md).
"""

import ml_collections

from configs import tiny
from longctx_jax.parallel.distributed import default_mesh_config


def get_config() -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.workdir = "runs/train_ring"
    config.model.attention.impl = "ring"
    config.mesh = default_mesh_config()
    config.mesh.data = 2
    config.mesh.sequence = 4
    config.mesh.layout = "zigzag"
    return config
