"""SmolLM2-135M fine-tuned past its 8192-token training length: PI against YaRN, several seeds.

Claims (fixed here, before the run; `longctx_jax/eval/verdicts.py` applies the rules):
  1. `yarn_vs_pi_finetuned` -- Peng et al. 2023 (YaRN, arXiv:2309.00071), the direction of Table 1:
     at the same fine-tuning steps, YaRN reaches lower perplexity at the extended length than PI.
  2. `pi_finetune` -- Chen et al. 2023 (PI, arXiv:2306.15595): a short fine-tune under
     interpolation lowers the interpolated model's perplexity at the extended length. Control:
     the same base under the same scaling, not fine-tuned.
  3. `yarn_finetune` -- the same for YaRN.

Each method fine-tunes the same base with the same recipe, data and data order per seed
(`configs/finetune_smollm2.py:cpu_pi` / `:cpu_yarn`, which differ only in `rope_scaling`, x2),
with `runs.overrides` applied; the seed sets the LoRA initialisation and the order of the
training documents. Evaluation: the first 2L + 1 tokens of `eval.num_docs` whole held-out
documents (the stdlib corpus's validation split at `eval.val_fraction`, which the fine-tunes'
data config holds out), one forward of 2L tokens per document and model; the series at 1L are
the first L targets of that forward (exact for these length-independent scalings). Series keys
are "<run>/full@<k>L" with L = the base's training length (8192).

Variants:
  cpu    (default) sized for a background run on a 2-core CPU (about 1 h 50 min on a 2-core
         Zen 4: a 2048-token step ~24 s, a 16K-token forward ~80 s): LoRA r=8, one 2048-token
         sequence per step, 24 steps per run (49,152 tokens), 3 seeds, 4 held-out documents of
         >= 16385 tokens (65,536 target tokens per series at 2L). The papers fine-tune at the
         target length for 400-1000 steps of 64 sequences; read the CPU result as the first
         steps of the recipe.
  gpu    toward the papers' scale on one H100 (not run): 16384-token sequences, bfloat16 compute,
         400 steps (YaRN's step count; one sequence per step, since the trainer has no gradient
         accumulation, where YaRN used 64), 3 seeds, 8 documents.
  smoke  a random 2-layer byte-level base (`finetune_smollm2:tiny`, L = 128): the tests' run.

  python -m experiments.reproduce --claim=smollm2_finetune            # configs/repro_smollm2.py:cpu
  python -m experiments.reproduce --claim=smollm2_finetune --size=gpu

The driver is `longctx_jax/eval/finetune_claims.py`; committed result:
docs/results/repro/smollm2_finetune.json.
"""

import ml_collections

VARIANTS = ("cpu", "gpu", "smoke")

CLAIMS = (
    {"name": "yarn_vs_pi_finetuned",
     "source": "Peng et al. 2023 (Table 1 direction)",
     "claim": "At the same fine-tuning steps, YaRN reaches lower perplexity at the extended length than PI.",
     "rules": (
         {"name": "YaRN fine-tune vs PI fine-tune at 2L",
          "method": "yarn_finetuned/full@2L", "control": "pi_finetuned/full@2L", "expect": "lower",
          "margin": 0.0},
     )},
    {"name": "pi_finetune",
     "source": "Chen et al. 2023",
     "claim": "A short fine-tune under Position Interpolation lowers its perplexity at the extended length.",
     "rules": (
         {"name": "PI fine-tune vs PI without fine-tuning at 2L",
          "method": "pi_finetuned/full@2L", "control": "pi_no_finetune/full@2L", "expect": "lower",
          "margin": 0.0},
     )},
    {"name": "yarn_finetune",
     "source": "Peng et al. 2023",
     "claim": "A short fine-tune under YaRN lowers its perplexity at the extended length.",
     "rules": (
         {"name": "YaRN fine-tune vs YaRN without fine-tuning at 2L",
          "method": "yarn_finetuned/full@2L", "control": "yarn_no_finetune/full@2L", "expect": "lower",
          "margin": 0.0},
     )},
)

# Run name -> the fine-tuning config it starts from; "<name>_finetuned" is the trained model and
# "<name>_no_finetune" the base under the same scaling, untrained (the control).
RUNS = {"pi": "finetune_smollm2:cpu_pi", "yarn": "finetune_smollm2:cpu_yarn"}


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of configs/repro_smollm2.py; valid: {VARIANTS}")
    config = ml_collections.ConfigDict()
    config.workdir = f"runs/repro_smollm2/{variant}"
    config.seeds = (0, 1, 2)
    config.claims = CLAIMS
    config.runs = dict(RUNS)
    # Applied to every run's fine-tuning config (nested fields), the same for every method.
    config.overrides = {"data": {"seq_len": 2048, "val_fraction": 0.1},
                        "train": {"steps": 24, "eval_every": 24, "checkpoint_every": 6}}
    config.eval = ml_collections.ConfigDict()
    config.eval.num_docs = 4
    config.eval.multiples = (1, 2)  # evaluated lengths, in multiples of the base's training length
    config.eval.block = 256  # targets per bootstrap block
    config.eval.val_fraction = 0.1  # the held-out split the documents come from (= the runs' data)
    if variant == "gpu":
        config.overrides = {
            "data": {"seq_len": 16384, "min_doc_tokens": 8192, "val_fraction": 0.1},
            "model": {"dtype": "bfloat16", "remat_policy": "dots_with_no_batch_dims_saveable"},
            "optim": {"learning_rate": 2e-4, "warmup_steps": 20},
            "train": {"steps": 400, "eval_every": 100, "checkpoint_every": 50, "loss_chunk": 2048}}
        config.eval.num_docs = 8
    if variant == "smoke":
        config.seeds = (0, 1)
        config.runs = {"pi": "finetune_smollm2:tiny", "yarn": "finetune_smollm2:tiny"}
        config.overrides = {"train": {"steps": 3, "eval_every": 3, "checkpoint_every": 2}}
        config.eval.val_fraction = 0.05  # the tiny config's own split (the suite's prepared corpus)
        config.run_overrides = {"yarn": {"position": {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}}}
        config.eval.num_docs = 2
        config.eval.block = 32
    else:
        config.run_overrides = {}
    return config
