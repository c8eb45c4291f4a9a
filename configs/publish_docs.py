"""Regenerates every results table in README.md and docs/ from the committed JSON in docs/results/.

  python -m experiments.publish_docs --config configs/publish_docs.py              # rewrite the blocks
  python -m experiments.publish_docs --config configs/publish_docs.py --config.check=True  # list stale ones

Each table sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`; the renderers are
`longctx_jax.bench.published.BLOCKS`. `tests/docs_results_test.py` fails while any block is stale.
"""

import ml_collections


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    if variant != "default":
        raise ValueError(f"unknown variant {variant!r}; valid: ('default',)")
    config = ml_collections.ConfigDict()
    config.check = False  # True: only report stale blocks (exit status 1 if any)
    return config
