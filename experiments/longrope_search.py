"""LongRoPE evolutionary search for a pretrained model's per-band RoPE factors, judged on held-out documents.

  python -m experiments.longrope_search --config configs/longrope_search_smollm2.py:cpu16k

searches SmolLM2-135M's factors for 8K -> 16K on the config's search documents
(`longctx_jax.search.longrope`), then scores the winner and `config.compare_methods` (the
paper's controls PI / NTK / YaRN / YaRN with LongRoPE's temperature, and Phi-3.5's published
factors) on disjoint test documents, and applies the config's verdict rule
(`longctx_jax.search.longrope_claim`). Writes `search_state.json` and `test_blocks.json`
(resumable), `rope_scaling.json` (the winner) and `summary.json`:
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
    print(json.dumps({k: summary[k] for k in ("search_documents", "test_documents", "verdict")}, indent=2))
    print(f"winner rope_scaling: {os.path.join(config.workdir, 'rope_scaling.json')}")


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
