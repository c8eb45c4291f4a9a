"""Regenerate the docs' results tables from docs/results/ (or, with --config.check, list stale ones).

  python -m experiments.publish_docs --config configs/publish_docs.py
"""

import sys

from longctx_jax import config_cli
from longctx_jax.bench.published import publish, stale_blocks

_CONFIG = config_cli.define_config("configs/publish_docs.py")


def main(config) -> None:
    if config.check:
        stale = stale_blocks()
        print("\n".join(stale) if stale else "every generated block equals its JSON")
        sys.exit(1 if stale else 0)
    changed = publish()
    print("rewrote: " + (", ".join(changed) if changed else "nothing (all blocks current)"))


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
