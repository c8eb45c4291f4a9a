"""Per-device memory and causal work of ring attention, written to `<workdir>/bench_ring.json`.

  python -m experiments.bench_ring --config configs/bench_ring.py --config.workdir=runs/bench_ring

Runs on `num_devices` fake host devices, set here before JAX starts.
"""

import os
import sys


def _set_device_count() -> None:
    """XLA reads the fake device count once, at backend start: set it from argv first."""
    count = 8
    for arg in sys.argv:
        if arg.startswith("--config.num_devices="):
            count = int(arg.split("=", 1)[1])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])


_set_device_count()

from longctx_jax import config_cli  # noqa: E402
from longctx_jax.bench import ring  # noqa: E402

_CONFIG = config_cli.define_config("configs/bench_ring.py")


if __name__ == "__main__":
    config_cli.run(ring.run, _CONFIG)
