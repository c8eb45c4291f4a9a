"""LongRoPE evolutionary search for a pretrained model's per-band RoPE factors.

  python -m experiments.longrope_search --config configs/longrope_search_smollm2.py:cpu16k

searches SmolLM2-135M's factors for 8K -> 16K (`longctx_jax.search.longrope`), then scores the
published methods in `config.compare_methods` (HF rope_scaling dicts: YaRN with its own
temperature, not the LongRoPE one its search candidate uses) on the same documents, and
writes `search_state.json` (resumable), `rope_scaling.json` (the winner) and `summary.json`
(every baseline, the winner's ratio to each method, best perplexity per generation):
`longctx_jax.search.longrope_run.run_longrope_search`.
"""

import json
import os

from absl import logging

from longctx_jax import config_cli
from longctx_jax.search.longrope_run import run_longrope_search

_CONFIG = config_cli.define_config("configs/longrope_search_smollm2.py")


def main(config) -> None:
    logging.set_verbosity(logging.WARNING)
    summary = run_longrope_search(config)
    print(json.dumps(summary, indent=2))
    print(f"winner rope_scaling: {os.path.join(config.workdir, 'rope_scaling.json')}")


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
