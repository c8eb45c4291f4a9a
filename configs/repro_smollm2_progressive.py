"""SmolLM2-135M extended x2 in two fine-tuning stages against one stage at the same budget.

Claim (fixed here, before the run; `longctx_jax/eval/verdicts.py` applies the rule):
  `progressive_smollm2` -- Ding et al. 2024 (LongRoPE, arXiv:2402.13753, sec. 3.3) extend in
  stages, each starting from the last; the claim tested is that two stages (YaRN x1.5, then
  x2 from its weights) are at least as good at the target length 2L as one stage of YaRN x2 of
  the same total steps (non-inferiority, margin 0.01 nats).

The runs are those of `configs/repro_smollm2.py` at the same variant (same recipe, data and
workdir, so the one-shot YaRN run and its scores are shared with that claim and reused), plus
`yarn_stage1` (YaRN x1.5, half the steps) and `yarn_progressive` (YaRN x2, the other half,
starting from `yarn_stage1`'s adapters of the same seed with a fresh optimizer,
`train.init_from`). Each stage has its own warm-up and cosine schedule. L = 8192.

  python -m experiments.reproduce --claim=smollm2_progressive      # configs/repro_smollm2_progressive.py:cpu
  python -m experiments.reproduce --claim=smollm2_progressive --size=gpu

Variants: `cpu` (12 + 12 steps against 24; the committed run took 0.8 h on a 2-core Zen 4
beyond the runs `repro_smollm2` shares, one stage-1 seed of which had run before), `gpu`
(200 + 200 against 400, not run) and `smoke` (the tiny random base, 3 + 3 against 6). The driver is `longctx_jax/eval/finetune_claims.py`; the result goes to
docs/results/repro/smollm2_progressive.json.
"""

import ml_collections

from configs import repro_smollm2

VARIANTS = repro_smollm2.VARIANTS
MARGIN = 0.01  # nats: the non-inferiority margin of the byte-level progressive claim

CLAIMS = (
    {"name": "progressive_smollm2",
     "source": "Ding et al. 2024 (LongRoPE, sec. 3.3)",
     "claim": "Extending in two stages (1.5x, then 2x) is at least as good at 2L as one stage at the same budget.",
     "rules": (
         {"name": "two stages vs one-shot YaRN x2 at 2L, non-inferiority margin 0.01 nats",
          "method": "yarn_progressive_finetuned/full@2L", "control": "yarn_finetuned/full@2L",
          "expect": "not_higher", "margin": MARGIN},
     )},
)


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of configs/repro_smollm2_progressive.py; valid: {VARIANTS}")
    config = repro_smollm2.get_config(variant)
    config.claims = CLAIMS
    yarn = repro_smollm2.RUNS["yarn"] if variant != "smoke" else config.runs["yarn"]
    if variant == "smoke":
        config.overrides.train.steps = 6
    steps = int(config.overrides.train.steps)
    scaling = {"rope_type": "yarn", "factor": 1.5}
    config.runs = {"yarn": yarn, "yarn_stage1": yarn, "yarn_progressive": yarn}
    run_overrides = dict(config.run_overrides.to_dict())
    target = run_overrides.get("yarn", {})  # the smoke's YaRN x2 (the real runs are YaRN x2 already)
    config.run_overrides = {
        **({"yarn": target} if target else {}),
        "yarn_stage1": {"train": {"steps": steps // 2}, "position": {"rope_scaling": scaling}},
        "yarn_progressive": {"train": {"steps": steps - steps // 2}, **target},
    }
    config.stages = {"yarn_progressive": "yarn_stage1"}
    return config
