"""Reproduce a long-context claim end to end: train its runs for every seed (reusing finished
ones, resuming interrupted ones), score them on held-out single-document windows, apply the
rules fixed in the claim's config, write `<out>/<claim>.json`.

  python -m experiments.reproduce --claim=alibi       # configs/repro_alibi.py (ALiBi, NoPE vs RoPE)
  python -m experiments.reproduce --claim=pi          # configs/repro_pi.py
  python -m experiments.reproduce --claim=yarn        # configs/repro_yarn.py
  python -m experiments.reproduce --claim=streaming   # configs/repro_streaming.py
  python -m experiments.reproduce --claim=window      # configs/repro_sliding_window.py
  python -m experiments.reproduce --claim=progressive # configs/repro_progressive.py
  python -m experiments.reproduce --claim=landmark    # configs/repro_landmark.py (passkey, per example)
  python -m experiments.reproduce --claim=memory_tokens  # configs/repro_memory_tokens.py (passkey)
  python -m experiments.reproduce --claim=smollm2_finetune    # configs/repro_smollm2.py (SmolLM2 fine-tunes)
  python -m experiments.reproduce --claim=smollm2_progressive # configs/repro_smollm2_progressive.py
  python -m experiments.reproduce --claim=pi --size=smoke   # the tiny size (tests, quick checks)
  python -m experiments.reproduce --claim=smollm2_finetune --size=gpu   # toward the papers' scale, one GPU

The committed results are docs/results/repro/<claim>.json (copy the JSON there, then
`python -m experiments.publish_docs --config configs/publish_docs.py`). The drivers are
`longctx_jax.eval.claims.CLAIMS`, `longctx_jax.eval.passkey_claims.DRIVERS` and
`longctx_jax.eval.finetune_claims.DRIVERS`, the rules
`longctx_jax.eval.verdicts`.
"""

import json
import os

from absl import flags, logging

from longctx_jax import config_cli
from longctx_jax.atomic import write_atomically
from longctx_jax.eval import finetune_claims, passkey_claims
from longctx_jax.eval.claims import CLAIMS, SIZES, run_claim
from longctx_jax.train.runs import FinetunedRuns, PasskeyRuns, TrainedRuns

_CLAIM = flags.DEFINE_enum("claim", "alibi", (*CLAIMS, *passkey_claims.DRIVERS, *finetune_claims.DRIVERS),
                           "Which reproduction to run.")
_SIZE = flags.DEFINE_enum("size", "claim", tuple(finetune_claims.SIZES),
                          "Size: the claim size, the tiny smoke size, or (fine-tuning claims) the GPU "
                          "preset.")
_OUT = flags.DEFINE_string("out", "runs/repro", "Directory for the results JSON.")
_STEPS_SCALE = flags.DEFINE_float("steps_scale", 1.0, "Multiply every run's steps (reduced-size runs).")


def main() -> None:
    logging.set_verbosity(logging.WARNING)
    claim = _CLAIM.value
    if _SIZE.value not in SIZES and claim not in finetune_claims.DRIVERS:
        raise ValueError(f"--size={_SIZE.value} applies to {tuple(finetune_claims.DRIVERS)} only; {claim!r} "
                         f"has sizes {SIZES}")
    if claim in finetune_claims.DRIVERS:
        if _STEPS_SCALE.value != 1.0:
            raise ValueError(f"--steps_scale={_STEPS_SCALE.value} does not apply to {claim!r}: its steps are "
                             "in its config's `overrides`")
        result = {"claim": claim, **finetune_claims.run_driver(claim, _SIZE.value, FinetunedRuns("configs"))}
    elif claim in passkey_claims.DRIVERS:
        if _STEPS_SCALE.value != 1.0:
            raise ValueError(f"--steps_scale={_STEPS_SCALE.value} applies to the decoder reproductions, not "
                             f"to {claim!r} (its runs take their steps from the config)")
        result = {"claim": claim, **passkey_claims.run_claim(claim, PasskeyRuns("configs"), size=_SIZE.value)}
    else:
        runs = TrainedRuns("configs", steps_scale=_STEPS_SCALE.value)
        result = {"claim": claim, "steps_scale": _STEPS_SCALE.value,
                  **run_claim(claim, runs, size=_SIZE.value)}
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, f"{claim}.json")
    write_atomically(path, json.dumps(result, indent=1) + "\n")
    for c in result["claims"]:
        print(f"{c['name']}: {c['verdict']}")
        for x in c["comparisons"]:
            print(f"  {x['rule']['name']}: delta {x['delta_nll']:+.4f} [{x['delta_lo']:+.4f}, "
                  f"{x['delta_hi']:+.4f}] -> {x['verdict']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    config_cli.run(main)
