"""The export job: a model from a GGUF file, a HF directory or a training run -> a HF directory.

    python -m experiments.export --config configs/export.py --config.source=... --config.out=...

`load_source` reads the three kinds of source with their tokenizer:
  * a `.gguf` file (`llama.load_gguf`; "" is the packaged SmolLM2-135M-Instruct), its BPE
    tokenizer rebuilt from the GGUF metadata;
  * a Hugging Face directory (config.json + *.safetensors; `llama.load_hf`) and its tokenizer.json;
  * a training run of this project: the run directory (its `config.json`, written by the
    trainer, gives `config.model`; its `checkpoints/` the parameters through `train.init_from`),
    its `checkpoints/` directory or one step directory inside it. Its tokenizer is taken from
    `config.tokenizer` (a GGUF file or HF directory; "" writes none, e.g. for byte-level runs).
For a HF source the files `PretrainedTokenizer` does not hold are carried over: the source's
`tokenizer_config.json` (chat template, added-token table; its `model_max_length` set to the new
`max_position_embeddings`) replaces the generated one, and `special_tokens_map.json` and
`generation_config.json` are copied. For a GGUF source its `tokenizer.chat_template` is written
to tokenizer_config.json.
`config.rope_scaling` / `config.rope_theta` replace the model's position scheme before it is
written (a scaling's `original_max_position_embeddings` defaults to the source's trained
length: the checkpoint's context, or a run's `data.seq_len`). Every setting is checked before
any weight is read.
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from flax import nnx

from longctx_jax.atomic import write_atomically
from longctx_jax.data import ByteTokenizer
from longctx_jax.models import gguf_file, hf_architectures, llama
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.export import export_hf
from longctx_jax.models.tokenizer import PretrainedTokenizer
from longctx_jax.train import finetune
from longctx_jax.train.init_from import init_params_from, resolve_checkpoint

SOURCE_KINDS = ("gguf", "hf", "checkpoint")
_COPIED_FILES = ("special_tokens_map.json", "generation_config.json")


def source_kind(source: str) -> str:
    """"gguf", "hf" or "checkpoint" for a source path ("" is the packaged SmolLM2 GGUF).

    Raises:
      ValueError: the path is none of the three, naming what each needs.
    """
    if source == "" or (os.path.isfile(source) and source.endswith(".gguf")):
        return "gguf"
    if os.path.isfile(os.path.join(source, "config.json")) and any(
            name.endswith(".safetensors") for name in os.listdir(source)):
        return "hf"
    if os.path.isdir(source):
        return "checkpoint"
    raise ValueError(f"export source {source!r} is not a .gguf file, a Hugging Face directory (config.json + "
                     "*.safetensors) or a training run / checkpoint directory")


def _run_config(source: str) -> dict[str, Any]:
    """The trainer's config.json of the run a checkpoint path belongs to."""
    directory, _ = resolve_checkpoint(source)
    run_dir = os.path.dirname(directory) if os.path.basename(directory) == "checkpoints" else directory
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"export source {source!r}: no run config {path} (written by the trainer); "
                         "the model shape of a checkpoint comes from it")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _tokenizer_of(path: str, vocab_size: int) -> PretrainedTokenizer | None:
    if not path:
        return None
    if os.path.isfile(path):
        metadata, _ = gguf_file.read(path)
        return PretrainedTokenizer.from_gguf_metadata(metadata, vocab_size=vocab_size)
    return PretrainedTokenizer.from_hf_directory(path, vocab_size=vocab_size)


def load_checkpoint_model(source: str, changes: Mapping[str, Any]) -> Decoder:
    """The decoder of a training run's checkpoint, its config from the run's config.json.

    Raises:
      ValueError: no run config, or parameters that differ from the config (`init_from`).
    """
    run = _run_config(source)
    model_cfg = dict(run["model"])
    if model_cfg.get("vocab_size") is None:
        model_cfg["vocab_size"] = ByteTokenizer().vocab_size
    cfg = ModelConfig.from_config(model_cfg)
    if "rope_scaling" in changes:
        trained = (run.get("data") or {}).get("seq_len")
        changes = {**changes, "rope_scaling": hf_architectures.complete_rope_scaling(changes["rope_scaling"],
                                                                                     trained)}
    cfg = cfg.replace(**changes) if changes else cfg
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    params, _ = init_params_from(params, source)
    return nnx.merge(graphdef, params)


def load_source(source: str, *, rope_scaling: Mapping[str, Any] | None = None,
                rope_theta: float | None = None, tokenizer: str = ""
                ) -> tuple[Decoder, PretrainedTokenizer | None]:
    """The model and tokenizer of an export source (module docstring).

    Args:
      source: a .gguf file ("" = packaged SmolLM2), a HF directory or a run / checkpoint directory.
      rope_scaling: a HF `rope_scaling` mapping replacing the model's.
      rope_theta: a new RoPE base (ABF), or None to keep it.
      tokenizer: for checkpoint sources, a GGUF file or HF directory holding the tokenizer.
    """
    kind = source_kind(source)
    overrides = {} if rope_theta is None else {"rope_theta": float(rope_theta)}
    if kind == "gguf":
        return llama.load_gguf(source or llama.smollm2_path(), rope_scaling=rope_scaling, **overrides)
    if kind == "hf":
        return llama.load_hf(source, rope_scaling=rope_scaling, **overrides)
    changes = dict(overrides, **({} if rope_scaling is None else {"rope_scaling": dict(rope_scaling)}))
    if finetune.is_run_directory(source):  # adapters + frozen base: rebuilt, LoRA merged
        if changes:
            raise ValueError(f"export source {source!r} is a fine-tuning run: it exports with the position "
                             f"scheme it was trained with; drop the overrides {sorted(changes)}")
        model, tok, _ = finetune.load_finetuned(source)
        return model, tok if isinstance(tok, PretrainedTokenizer) else None
    model = load_checkpoint_model(source, changes)
    return model, _tokenizer_of(tokenizer, model.cfg.vocab_size)


def run(config: ml_collections.ConfigDict) -> str:
    """Loads `config.source`, writes the HF directory `config.out`; returns its path.

    Raises:
      ValueError: an empty `out`, an unknown architecture or source, before any weight is read.
    """
    if not config.out:
        raise ValueError("config.out is empty; give the output directory, e.g. --config.out=runs/export_hf")
    hf_architectures.architecture(config.architecture)
    source_kind(config.source)
    if config.max_shard_bytes <= 0:
        raise ValueError(f"config.max_shard_bytes must be positive, got {config.max_shard_bytes}")
    if config.max_position_embeddings < 0:
        raise ValueError(f"config.max_position_embeddings must be >= 0 (0: derived), "
                         f"got {config.max_position_embeddings}")
    model, tokenizer = load_source(config.source, rope_scaling=config.rope_scaling,
                                   rope_theta=config.rope_theta or None, tokenizer=config.tokenizer)
    kind = source_kind(config.source)
    chat_template = None
    if kind == "gguf":
        metadata, _ = gguf_file.read(config.source or llama.smollm2_path())
        chat_template = metadata.get("tokenizer.chat_template")
    out = export_hf(model, tokenizer, config.out, architecture=config.architecture,
                    max_position_embeddings=config.max_position_embeddings or None,
                    max_shard_bytes=config.max_shard_bytes, chat_template=chat_template)
    if kind == "hf" and tokenizer is not None:
        carry_tokenizer_files(config.source, out)
    return out


def carry_tokenizer_files(source: str, out: str) -> list[str]:
    """Copies the HF source's tokenizer_config.json (model_max_length updated to out's
    max_position_embeddings), special_tokens_map.json and generation_config.json; returns the names."""
    carried = []
    path = os.path.join(source, "tokenizer_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            tok_config = json.load(f)
        with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
            tok_config["model_max_length"] = json.load(f)["max_position_embeddings"]
        write_atomically(os.path.join(out, "tokenizer_config.json"), json.dumps(tok_config, indent=2))
        carried.append("tokenizer_config.json")
    for name in _COPIED_FILES:
        if os.path.isfile(os.path.join(source, name)):
            with open(os.path.join(source, name), "rb") as f:
                write_atomically(os.path.join(out, name), f.read())
            carried.append(name)
    return carried


__all__ = ["SOURCE_KINDS", "carry_tokenizer_files", "load_checkpoint_model", "load_source", "run",
           "source_kind"]
