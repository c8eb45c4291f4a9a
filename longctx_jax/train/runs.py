"""Named training runs: train a config once (reusing a finished run), load its trained decoder.

The reproductions (`longctx_jax/eval/claims.py`) name their runs by config spec,
"repro_alibi:rope" = `configs/repro_alibi.py` with `get_config("rope")`; `TrainedRuns` resolves
those specs in a config directory and trains or loads them, once per seed (`with_seed`: the
seed's own workdir, and a fine-tune starts from the same seed's base run). `train_or_reuse`
and `load_trained` do the same for a config object. `PasskeyRuns` runs the synthetic passkey
reproductions, `FinetunedRuns` the fine-tunes of a pretrained model (`train.finetune`) that
`eval/finetune_claims.py` judges.
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from flax import nnx

from longctx_jax import config_cli
from longctx_jax.atomic import write_atomically
from longctx_jax.data import ByteTokenizer, Tokenizer
from longctx_jax.train.finetune import check_finetune_config, finetune, load_base, load_finetuned
from longctx_jax.train.init_from import init_params_from
from longctx_jax.train.optimizer import learning_rate_schedule
from longctx_jax.train.synthetic import passkey_retrieval
from longctx_jax.train.trainer import decoder_from_config, train_and_evaluate

VOCAB = ByteTokenizer().vocab_size
_ATTENTION_FIELDS = ("window", "sinks")


def train_or_reuse(config: ml_collections.ConfigDict, *, steps_scale: float = 1.0) -> dict[str, Any]:
    """Trains `config` in its workdir unless a finished run is there; returns its summary.

    A finished run (its summary.json) is reused whatever its step count, which the summary
    records; `steps_scale` only sizes runs trained now (steps = max(steps * scale, warmup + 1),
    with one evaluation at the end, checkpoints every `train.checkpoint_every` steps at most, so an
    interrupted run resumes from its last checkpoint).
    """
    if steps_scale <= 0:
        raise ValueError(f"steps_scale must be positive, got {steps_scale}")
    path = os.path.join(config.workdir, "summary.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    config = config.copy_and_resolve_references()
    config.train.steps = max(int(config.train.steps * steps_scale), config.optim.warmup_steps + 1)
    config.train.eval_every = config.train.steps
    config.train.checkpoint_every = min(config.train.checkpoint_every, config.train.steps)
    out = train_and_evaluate(config, config.workdir)
    return {k: v for k, v in out.items() if k not in ("state", "graphdef")}


def load_trained(config: ml_collections.ConfigDict, **model_changes: Any) -> nnx.Module:
    """The trained decoder of `config.workdir`, with `model_changes` applied to its config first.

    Args:
      config: the run's config (byte tokenizer vocabulary).
      **model_changes: `config.model` fields to change (`window` and `sinks` go to
        `config.model.attention`), e.g. `rope_scaling={...}` for a training-free scaling.
    """
    config = config.copy_and_resolve_references()
    for name, value in model_changes.items():
        if name in _ATTENTION_FIELDS:
            config.model.attention[name] = value
        elif name in config.model:
            config.model[name] = value
        else:
            raise ValueError(f"unknown model field {name!r}; valid: {sorted(config.model)}")
    model = decoder_from_config(config, VOCAB)
    graphdef, params = nnx.split(model)
    params, _ = init_params_from(params, config.workdir)
    return nnx.merge(graphdef, params)


def with_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """`config` with `seed` (initialisation and data order) in `<workdir>/seed<seed>`; a run that
    starts from another (`train.init_from`) starts from that run's same seed."""
    _check_seed(seed)
    config = config.copy_and_resolve_references()
    config.seed = seed
    config.workdir = os.path.join(config.workdir, f"seed{seed}")
    if config.train.get("init_from"):
        config.train.init_from = os.path.join(config.train.init_from, f"seed{seed}")
    return config


def load_spec(config_dir: str, spec: str) -> ml_collections.ConfigDict:
    """The config of run spec "NAME:variant" = `<config_dir>/NAME.py` with `get_config(variant)`."""
    name, sep, variant = spec.partition(":")
    path = os.path.join(config_dir, f"{name}.py")
    if not os.path.exists(path):
        raise ValueError(f"no config file {path} for run {spec!r}")
    return config_cli.load_config(path + sep + variant)


def _check_seed(seed: Any) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


class TrainedRuns:
    """Runs named by config spec ("NAME:variant" = `<config_dir>/NAME.py` with `get_config(variant)`).

    Args:
      config_dir: the directory of the config files.
      steps_scale: multiplies the steps of runs trained now (reduced-size runs).
    """

    def __init__(self, config_dir: str = "configs", *, steps_scale: float = 1.0):
        if steps_scale <= 0:
            raise ValueError(f"steps_scale must be positive, got {steps_scale}")
        self.config_dir = config_dir
        self.steps_scale = steps_scale

    def config(self, spec: str, seed: int | None = None) -> ml_collections.ConfigDict:
        """The config of `spec` (with `seed`, see `with_seed`, unless None)."""
        config = load_spec(self.config_dir, spec)
        return config if seed is None else with_seed(config, seed)

    def train(self, spec: str, seed: int | None = None) -> dict[str, Any]:
        """Summary of the run `spec` (at `seed`), trained now unless finished (see `train_or_reuse`)."""
        return train_or_reuse(self.config(spec, seed), steps_scale=self.steps_scale)

    def load(self, spec: str, seed: int | None = None, **model_changes: Any) -> nnx.Module:
        """The trained decoder of `spec` at `seed` (see `load_trained`)."""
        return load_trained(self.config(spec, seed), **model_changes)


PASSKEY_ROOT = "runs/repro_passkey"
CLAIM_FIELDS = ("claims", "seeds")


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]}: stored {a!r}, asked {b!r}"]


class PasskeyRuns:
    """Passkey runs (`train.synthetic.passkey_retrieval`) named by config spec, one per seed.

    The spec "repro_landmark:full:no_landmark" at seed 1 is `<config_dir>/repro_landmark.py` with
    `get_config("full:no_landmark")`, seed 1, in `<root>/landmark/full_no_landmark/seed1`. A
    finished run (its results.json) is reused only if the config it stored equals the config
    asked for (less `claims` and `seeds`, which the claim reads and the run does not); otherwise
    `train` raises rather than mixing runs of different settings.

    Args:
      config_dir: the directory of the config files.
      root: the directory holding every run.
    """

    def __init__(self, config_dir: str = "configs", root: str = PASSKEY_ROOT):
        self.config_dir = config_dir
        self.root = root

    def config(self, spec: str, seed: int) -> ml_collections.ConfigDict:
        """The config of `spec` with `seed` and its own workdir."""
        _check_seed(seed)
        name, _, variant = spec.partition(":")
        config = load_spec(self.config_dir, spec)
        config.seed = seed
        config.workdir = os.path.join(self.root, name.removeprefix("repro_"), variant.replace(":", "_"),
                                      f"seed{seed}")
        return config

    def train(self, spec: str, seed: int) -> dict[str, Any]:
        """The results of run `spec` at `seed`: trained now unless a finished run with the same config
        is in its workdir.

        Raises:
          ValueError: a finished run in that workdir was trained with a different config.
        """
        config = self.config(spec, seed).copy_and_resolve_references()
        for field in CLAIM_FIELDS:  # what the claim reads, not what the run does
            if field in config:
                del config[field]
        path = os.path.join(config.workdir, "results.json")
        asked = json.loads(config.to_json())
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
            if diff := _differences(stored["config"], asked):
                raise ValueError(f"{path} was trained with another config ({'; '.join(diff)}); move it away "
                                 "or restore those settings")
            return stored
        os.makedirs(config.workdir, exist_ok=True)
        result = passkey_retrieval(config)
        write_atomically(path, json.dumps(result, indent=1) + "\n")
        return result


class FinetunedRuns:
    """Fine-tuning runs of a pretrained base (`train.finetune`) by config spec, for
    `eval/finetune_claims.py`.

    A run's config is `<config_dir>/NAME.py:variant` with dotted `overrides`, its `seed` and its
    `workdir`. A finished run (summary.json) is reused only if the config it stored equals the
    config asked for; otherwise `train` raises rather than mixing runs of different settings. An
    unfinished run resumes from its checkpoints.
    """

    def __init__(self, config_dir: str = "configs"):
        self.config_dir = config_dir

    def config(self, spec: str, seed: int, overrides: Mapping[str, Any], workdir: str
               ) -> ml_collections.ConfigDict:
        """The fine-tuning config of `spec` with `overrides`, `seed` and `workdir`, validated
        (`check_finetune_config`, the learning-rate schedule) so a claim refuses it before training."""
        _check_seed(seed)
        config = config_cli.apply_overrides(load_spec(self.config_dir, spec), overrides)
        config.seed = seed
        config.workdir = workdir
        check_finetune_config(config)  # the fine-tune's own checks, before any run of a claim trains
        learning_rate_schedule(config.optim, int(config.train.steps))  # warm-up within the steps
        return config

    def train(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """The summary of the run of `config`: fine-tuned now (or resumed) unless finished.

        Raises:
          ValueError: a finished run in `config.workdir` was trained with another config.
        """
        path = os.path.join(config.workdir, "summary.json")
        if os.path.exists(path):
            with open(os.path.join(config.workdir, "config.json"), encoding="utf-8") as f:
                stored = json.load(f)
            if diff := _differences(stored, json.loads(config.to_json_best_effort())):
                raise ValueError(f"{config.workdir} holds a run of another config ({'; '.join(diff)}); move "
                                 "it away or restore those settings")
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        out = finetune(config, config.workdir)
        return {k: v for k, v in out.items() if k not in ("state", "graphdef", "frozen")}

    def load(self, config: ml_collections.ConfigDict) -> tuple[nnx.Module, Tokenizer, str]:
        """The fine-tuned model of `config.workdir` (LoRA merged), its tokenizer and content key."""
        return load_finetuned(config.workdir)

    def base(self, config: ml_collections.ConfigDict) -> tuple[nnx.Module, Tokenizer, str]:
        """The base of `config` under its position scheme, untrained; the key covers both."""
        model, tokenizer, base_key = load_base(config)
        scheme = {"rope_scaling": model.cfg.rope_scaling_dict, "rope_theta": model.cfg.rope_theta,
                  "dtype": str(model.cfg.dtype)}
        return model, tokenizer, f"base-{base_key}-{json.dumps(scheme, sort_keys=True)}"
