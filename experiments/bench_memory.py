"""Per-device compiled memory of sharded train steps, into docs/results/memory and docs/finetuning.md.

  python -m experiments.bench_memory --config configs/bench_memory.py
  python -m experiments.bench_memory --config configs/bench_memory.py:table

Without `--config.num_devices` it runs itself once per device count of `config.rows` (the
fake device count is fixed at backend start) and then writes the doc's table; with it, it
compiles that count's rows on as many fake host devices, set here before JAX starts, with
XLA's memory-minimising CPU scheduler (`MEMORY_SCHEDULER`).
"""

import os
import sys

# XLA's CPU default schedules for concurrency and keeps rematerialised activations alive as if
# remat were off; GPU and TPU compile with memory-aware schedulers, which this one stands in for.
MEMORY_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def _set_device_count() -> None:
    """XLA reads the fake device count once, at backend start: set it from argv first."""
    for arg in sys.argv:
        if arg.startswith("--config.num_devices="):
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
            flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
            count = int(arg.split("=", 1)[1])
            os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}",
                                                        MEMORY_SCHEDULER])


_set_device_count()

from longctx_jax import config_cli  # noqa: E402
from longctx_jax.bench import memory  # noqa: E402

_CONFIG = config_cli.define_config("configs/bench_memory.py")


def main(config) -> None:
    if config.num_devices is not None:
        memory.run(config)
        return
    if not config.table_only:
        memory.run_all(config, sys.argv[1:])
    print(memory.update_doc(config.doc, config.workdir))


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
