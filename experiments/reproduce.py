"""Reproduce a long-context claim end to end: train its runs (reusing finished ones), evaluate
perplexity against length on held-out stdlib documents, write `<out>/<claim>.json`.

  python -m experiments.reproduce --claim=alibi       # configs/repro_alibi.py
  python -m experiments.reproduce --claim=pi          # configs/repro_pi.py (needs the rope run)
  python -m experiments.reproduce --claim=yarn        # configs/repro_yarn.py (needs pi)
  python -m experiments.reproduce --claim=streaming   # configs/repro_streaming.py
  python -m experiments.reproduce --claim=window      # configs/repro_sliding_window.py
  python -m experiments.reproduce --claim=progressive # configs/repro_progressive.py (needs pi)

The claims, their protocols and verdicts are `longctx_jax.eval.claims.CLAIMS`.
"""

import json
import os

from absl import flags, logging

from longctx_jax import config_cli
from longctx_jax.eval.claims import ALIBI_VARIANTS, CLAIMS, run_claim
from longctx_jax.train.runs import TrainedRuns

_CLAIM = flags.DEFINE_enum("claim", "alibi", tuple(CLAIMS), "Which reproduction to run.")
_OUT = flags.DEFINE_string("out", "runs/repro", "Directory for the results JSON.")
_VARIANTS = flags.DEFINE_list("variants", list(ALIBI_VARIANTS), "alibi claim: which base models.")
_STEPS_SCALE = flags.DEFINE_float("steps_scale", 1.0, "Multiply every run's steps (reduced-size runs).")


def main() -> None:
    logging.set_verbosity(logging.WARNING)
    claim = _CLAIM.value
    runs = TrainedRuns("configs", steps_scale=_STEPS_SCALE.value)
    variants = _VARIANTS.value if claim == "alibi" else None
    result = {"claim": claim, "steps_scale": _STEPS_SCALE.value, **run_claim(claim, runs, variants=variants)}
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, f"{claim}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    config_cli.run(main)
