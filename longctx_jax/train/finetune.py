"""Fine-tuning a pretrained decoder at a longer context: PI, YaRN, ABF, LongRoPE, LongLoRA.

`finetune(config, workdir)` is what `experiments/finetune.py` runs (config:
`configs/finetune_smollm2.py`). It loads the base weights with their own tokenizer
(`config.base`: a GGUF file, a Hugging Face directory, or, for tests, a random
`config.base.model`), sets the position scheme (`config.position`: any HF `rope_scaling`,
a new `rope_theta` as in Code Llama's "ABF", or LongRoPE factors), optionally attaches LoRA
adapters (`config.lora`, `longctx_jax.models.lora`) and trains with S2-Attn
(`config.s2_group_size`), then hands everything to the one training loop,
`trainer.train_and_evaluate`: long documents of `config.data` tokenized with the model's
tokenizer and packed with document segment ids, validation on the held-out split,
optax, Orbax checkpoints (trainable params, optimizer state, step = data position),
bit-exact resume, metrics JSONL + TensorBoard, a progress bar.

Every input is validated before the base is trained on (`check_finetune_config` and the
model build): a rope scaling the model cannot take, LoRA targets that do not exist, a
sequence length that the S2 group or the mesh's sequence axis does not divide, and (when
resuming) a checkpoint of another architecture all raise ValueError before any step.

`load_finetuned(path)` rebuilds the trained model from a run directory (LoRA merged,
validation attention) for `experiments.extend --config.checkpoint=<workdir>`.
"""

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from longctx_jax.data import ByteTokenizer, Tokenizer
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.llama import complete_rope_scaling, load_gguf, load_hf, smollm2_path
from longctx_jax.models.lora import LoraSpec, add_lora, merge_lora, rebuild, trainable_filter
from longctx_jax.train.checkpoint import Checkpointer
from longctx_jax.train.optimizer import make_optimizer
from longctx_jax.train.step import init_train_state
from longctx_jax.train.trainer import ModelSetup, make_training_data, train_and_evaluate

BASE_KINDS = ("gguf", "hf", "random")
# ModelConfig fields a fine-tuning config may change on the loaded base.
MODEL_OVERRIDES = ("dtype", "remat", "remat_policy", "attention_impl")


def rope_changes(position_cfg: Mapping[str, Any], original_length: int, seq_len: int) -> dict[str, Any]:
    """`ModelConfig` changes of `config.position`: rope_scaling, rope_theta, or LongRoPE factors.

    Args:
      position_cfg: `rope_scaling` (an HF mapping or None), `rope_theta` (None: keep),
        `longrope` (None, or `{"short_factor": [...], "long_factor": [...]}` as the LongRoPE
        search writes them; factor = seq_len / original_length).
      original_length: the base model's pretraining context.
      seq_len: the fine-tuning length.

    Raises:
      ValueError: both rope_scaling and longrope given, or a non-positive rope_theta.
    """
    scaling, theta, longrope = (position_cfg.get(k) for k in ("rope_scaling", "rope_theta", "longrope"))
    changes: dict[str, Any] = {}
    if scaling is not None and longrope is not None:
        raise ValueError("config.position: give rope_scaling or longrope, not both")
    if longrope is not None:
        unknown = sorted(set(longrope) - {"short_factor", "long_factor", "factor"})
        if unknown:
            raise ValueError(f"config.position.longrope has unknown fields {unknown}; valid: short_factor, "
                             "long_factor, factor")
        scaling = {"rope_type": "longrope", "factor": max(1.0, seq_len / original_length), **dict(longrope)}
    if scaling is not None:
        changes["rope_scaling"] = complete_rope_scaling(dict(scaling), original_length)
    if theta is not None:
        if not float(theta) > 0:
            raise ValueError(f"config.position.rope_theta must be positive, got {theta!r}")
        changes["rope_theta"] = float(theta)
    return changes


def check_finetune_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field that needs no model to check."""
    kind = config.base.kind
    if kind not in BASE_KINDS:
        raise ValueError(f"unknown config.base.kind {kind!r}; valid: {BASE_KINDS}")
    if kind == "hf" and not config.base.path:
        raise ValueError("config.base.kind='hf' needs config.base.path (a Hugging Face directory)")
    unknown = sorted(set(config.model) - set(MODEL_OVERRIDES))
    if unknown:
        raise ValueError(f"config.model may only override {MODEL_OVERRIDES}; got {unknown}")
    seq_len = int(config.data.seq_len)
    group = config.get("s2_group_size")
    if group is not None and seq_len % int(group):
        raise ValueError(f"data.seq_len {seq_len} is not a multiple of s2_group_size {group}; "
                         f"use a multiple of {group}")
    mesh = config.get("mesh")
    if mesh is not None and seq_len % int(mesh.get("sequence", 1)):
        raise ValueError(f"data.seq_len {seq_len} is not divisible by the mesh's sequence axis "
                         f"({mesh.sequence} devices)")
    if config.lora.enabled:
        LoraSpec(int(config.lora.rank), float(config.lora.alpha), tuple(config.lora.targets))
    else:
        trainable_filter(lora=False, train_embeddings_and_norms=bool(config.lora.train_embeddings_and_norms))


def load_base(config: ml_collections.ConfigDict) -> tuple[Decoder, Tokenizer, str]:
    """The base model under the fine-tuning position scheme and overrides, its tokenizer and a
    content key of its weights (the GGUF's / safetensors' sha256, or the random seed)."""
    overrides = dict(config.model)
    changes = rope_changes(config.position, int(config.base.original_length), int(config.data.seq_len))
    kind, path = config.base.kind, config.base.path
    if kind == "gguf":
        path = path or smollm2_path()
        model, tokenizer = load_gguf(path, **changes, **overrides)
        return model, tokenizer, _file_key(path)
    if kind == "hf":
        model, tokenizer = load_hf(path, **changes, **overrides)
        if tokenizer is None:
            raise ValueError(f"{path!r} has no tokenizer.json; fine-tuning needs the model's own tokenizer")
        key = ",".join(_file_key(os.path.join(path, f)) for f in sorted(os.listdir(path))
                       if f.endswith((".safetensors", ".json")))
        return model, tokenizer, key
    tokenizer = ByteTokenizer()
    values = {"vocab_size": tokenizer.vocab_size, **dict(config.base.model), **overrides, **changes}
    model = Decoder(ModelConfig.from_config(values), rngs=nnx.Rngs(int(config.base.seed)))
    key = f"random:{json.dumps(dict(config.base.model), sort_keys=True)}:{config.base.seed}"
    return model, tokenizer, key


def _file_key(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_setup(config: ml_collections.ConfigDict) -> tuple[ModelSetup, Tokenizer]:
    """The model to train (adapters attached, S2-Attn on) and its validation twin, validated."""
    check_finetune_config(config)
    model, tokenizer, base_key = load_base(config)
    lora_on = bool(config.lora.enabled)
    if lora_on:
        spec = LoraSpec(int(config.lora.rank), float(config.lora.alpha), tuple(config.lora.targets))
        add_lora(model, spec, rngs=nnx.Rngs(int(config.seed)))
    trainable = trainable_filter(lora=lora_on,
                                 train_embeddings_and_norms=bool(config.lora.train_embeddings_and_norms))
    eval_model = None
    if config.get("s2_group_size") is not None:
        eval_model = model
        model = rebuild(model, attention_pattern="s2",
                        attention_options={"group_size": int(config.s2_group_size)})
    info = {"base": config.base.kind, "base_key": base_key, "rope_scaling": model.cfg.rope_scaling_dict,
            "rope_theta": model.cfg.rope_theta}
    return ModelSetup(model, trainable, eval_model, info), tokenizer


def finetune(config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
             ) -> dict[str, Any]:
    """Fine-tunes `config.base` in `workdir` (resuming if it holds checkpoints); returns the summary.

    Args:
      config: a fine-tuning config (configs/finetune_smollm2.py).
      workdir: run directory (checkpoints/, metrics.jsonl, config.json, summary.json).
      stop_at_step: end the process after that step, as a preemption would.
    """
    setup, tokenizer = build_setup(config)
    if tokenizer.vocab_size > setup.model.cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids, the model's embedding only "
                         f"{setup.model.cfg.vocab_size}")
    data = make_training_data(config.data, seed=int(config.seed), tokenizer=tokenizer)
    return train_and_evaluate(config, workdir, stop_at_step=stop_at_step, data=data, setup=setup)


def _run_dir(path: str) -> str:
    path = os.path.abspath(path)
    if os.path.basename(path.rstrip(os.sep)) == "checkpoints":
        path = os.path.dirname(path.rstrip(os.sep))
    return path


def is_run_directory(path: str) -> bool:
    """Whether `path` is a fine-tuning workdir (or its checkpoints/): config.json with a `base`."""
    if not path or not os.path.isdir(path):
        return False
    run_dir = _run_dir(path)
    config_path = os.path.join(run_dir, "config.json")
    if not (os.path.isfile(config_path) and os.path.isdir(os.path.join(run_dir, "checkpoints"))):
        return False
    with open(config_path) as f:
        return "base" in json.load(f)


def training_data(path: str) -> tuple[str, float]:
    """`(data.source, data.val_fraction)` of a fine-tuning run directory: what it trained on, so an
    evaluation can hold those documents out (`eval.extension.check_held_out`)."""
    if not is_run_directory(path):
        raise ValueError(f"{path!r} is not a fine-tuning run directory (config.json with a base, "
                         "and checkpoints/)")
    with open(os.path.join(_run_dir(path), "config.json")) as f:
        data = json.load(f).get("data", {})
    return str(data.get("source", "stdlib")), float(data.get("val_fraction", 0.05))


def load_finetuned(path: str) -> tuple[Decoder, Tokenizer, str]:
    """The fine-tuned model of a run directory: LoRA merged, validation attention, newest checkpoint.

    Args:
      path: a `finetune` workdir, or its `checkpoints` directory.

    Returns:
      (plain Decoder, tokenizer, content key: sha256 over the base key and the restored weights).

    Raises:
      ValueError: not a run directory, or no checkpoint restores into the rebuilt model.
    """
    if not is_run_directory(path):
        raise ValueError(f"{path!r} is not a fine-tuning run directory (config.json with a base, "
                         "and checkpoints/)")
    run_dir = _run_dir(path)
    with open(os.path.join(run_dir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    setup, tokenizer = build_setup(config)
    model = setup.eval_model or setup.model
    _, params, _ = nnx.split(model, setup.trainable, ...)
    tx = make_optimizer(config.optim, int(config.train.steps))
    abstract = jax.eval_shape(lambda p: init_train_state(p, tx), params)
    checkpointer = Checkpointer(os.path.join(run_dir, "checkpoints"))
    step, state = checkpointer.restore_latest(abstract)
    checkpointer.close()
    if step is None:
        raise ValueError(f"{run_dir!r} holds no checkpoint")
    nnx.update(model, state.params)
    merged = merge_lora(model)
    digest = hashlib.sha256(setup.info["base_key"].encode())
    for leaf in jax.tree.leaves(nnx.state(merged)):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return merged, tokenizer, f"finetuned-step{step}-{digest.hexdigest()}"
