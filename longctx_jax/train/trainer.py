"""The training loop: `train_and_evaluate(config, workdir)`.

Builds the data, the decoder and the optax optimizer from an ml_collections config,
resumes from the newest Orbax checkpoint in `workdir/checkpoints` that restores (see
`longctx_jax.train.checkpoint` for the faults it survives), and trains with a jitted,
state-donating step. Batches come from `batch_at(step)`, so a resumed
run sees exactly the data an uninterrupted run would: resuming is bit-exact.

Writes to `workdir`: `config.json`, `metrics.jsonl` (`step`, `train_loss`, `val_loss`,
`val_bpb`, ...), TensorBoard events, `checkpoints/`, `summary.json` and `summary.md`. The
config is validated and the state built and restored before anything is written, and the
metrics of steps after the resumed checkpoint (from a process that died before saving them)
are replaced, not duplicated (`MetricsWriter(resume_step=...)`).
"""

import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from longctx_jax import sharding
from longctx_jax.atomic import write_atomically
from longctx_jax.data import (
    Batches,
    ByteTokenizer,
    Tokenizer,
    byte_unigram_baseline,
    make_batches,
    validation_set,
)
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder
from longctx_jax.parallel import distributed
from longctx_jax.train.checkpoint import Checkpointer, abstract_like
from longctx_jax.train.curriculum import training_batches
from longctx_jax.train.init_from import init_params_from
from longctx_jax.train.metrics import MetricsWriter, peak_memory_gib
from longctx_jax.train.optimizer import learning_rate_schedule, make_optimizer
from longctx_jax.train.step import (
    TrainState,
    init_train_state,
    make_eval_step,
    make_train_step,
    summarize_eval,
)


@dataclasses.dataclass
class TrainingData:
    """Training batches by step, the fixed validation set, and the tokenizer behind them."""

    tokenizer: Tokenizer
    train: Batches
    validation: dict[str, np.ndarray]
    eval_batch_size: int
    unigram_bpb: float | None  # the byte-unigram baseline; None for other tokenizers

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        return self.train.batch_at(step)

    def validation_batches(self):
        total = len(self.validation["inputs"])
        for start in range(0, total - self.eval_batch_size + 1, self.eval_batch_size):
            yield {k: v[start:start + self.eval_batch_size] for k, v in self.validation.items()}


def make_training_data(data_cfg: ml_collections.ConfigDict, *, seed: int,
                       tokenizer: Tokenizer | None = None) -> TrainingData:
    """Batches of `config.data` (stdlib corpus, a text directory or a TFDS dataset).

    `tokenizer`: a pretrained model's own tokenizer; None: bytes (with the byte-unigram baseline).
    """
    byte_level = tokenizer is None
    tokenizer = tokenizer or ByteTokenizer()
    seq_len, batch_size = int(data_cfg.seq_len), int(data_cfg.batch_size)
    train = make_batches(data_cfg, tokenizer, data_cfg.train_split, seq_len, batch_size, seed)
    validation = validation_set(data_cfg, tokenizer, seq_len, int(data_cfg.eval_sequences))
    if len(validation["inputs"]) < batch_size:
        raise ValueError(
            f"the validation split holds {len(validation['inputs'])} sequences of length {seq_len}, "
            f"fewer than one batch ({batch_size}); lower data.batch_size or data.seq_len"
        )
    baseline = byte_unigram_baseline(data_cfg) if byte_level else None
    return TrainingData(tokenizer, train, validation, batch_size, baseline)


def decoder_from_config(config: ml_collections.ConfigDict, vocab_size: int) -> Decoder:
    """The decoder described by `config.model`, its vocabulary sized by the tokenizer."""
    model_cfg = dict(config.model)
    if model_cfg.get("vocab_size") is None:
        model_cfg["vocab_size"] = vocab_size
    elif model_cfg["vocab_size"] < vocab_size:
        raise ValueError(
            f"model.vocab_size ({model_cfg['vocab_size']}) is smaller than the tokenizer's ({vocab_size})"
        )
    return Decoder(ModelConfig.from_config(model_cfg), rngs=nnx.Rngs(config.seed))


@dataclasses.dataclass
class ModelSetup:
    """A prepared model to train instead of a fresh `config.model` (e.g. pretrained weights).

    Attributes:
      model: the decoder to train (with any adapters attached).
      trainable: NNX filter of the parameters that get gradients and optimizer state; the
        others stay frozen and are not checkpointed (rebuilt from the same source on resume).
      eval_model: the same parameters under the configuration validation runs with (e.g.
        full attention for a model trained with S2-Attn); None: `model`.
      info: extra summary fields (base checkpoint, trainable parameter count, ...).
    """

    model: Decoder
    trainable: Any = nnx.Param
    eval_model: Decoder | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def validation_metrics(eval_step, params: nnx.State, data: TrainingData) -> dict[str, float]:
    """Mean validation loss, perplexity and bits per byte over the fixed validation set."""
    totals = {"nll_sum": 0.0, "tokens": 0.0, "bytes": 0.0}
    for batch in data.validation_batches():
        sums = eval_step(params, batch)
        for name in totals:
            totals[name] += float(sums[name])
    return summarize_eval(totals)


TRAIN_COUNTS = ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints")


def check_train_config(train_cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming any `config.train` count that is not a positive integer."""
    for name in TRAIN_COUNTS:
        value = train_cfg.get(name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"config.train.{name} must be a positive integer, got {value!r}")
    chunk = train_cfg.get("loss_chunk")
    bad_chunk = isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1
    if chunk is not None and bad_chunk:
        raise ValueError(f"config.train.loss_chunk must be None or a positive integer, got {chunk!r}")


def _write_summary(workdir: str, summary: dict[str, Any]) -> None:
    write_atomically(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    lines = ["# Training run", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in summary.items()]
    write_atomically(os.path.join(workdir, "summary.md"), "\n".join(lines) + "\n")


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None,
    data: TrainingData | None = None, setup: ModelSetup | None = None,
) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the summary.

    Args:
      config: the experiment config (see configs/tiny.py).
      workdir: run directory; holds checkpoints and metrics.
      stop_at_step: end this process after that step (as a preemption would), leaving the
        run resumable; None trains to `config.train.steps`.
      data: prepared data (e.g. tokenized with a pretrained tokenizer); None: bytes of `config.data`.
      setup: a prepared model (see `ModelSetup`; `longctx_jax.train.finetune`); None: a
        fresh `config.model`.
    """
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir} is a file, not a directory")
    check_train_config(config.train)
    mesh = distributed.mesh_from_config(config)  # None without config.mesh: one device
    layout = config.mesh.get("layout", "natural") if mesh is not None else "natural"
    distributed.check_batch_shape(int(config.data.batch_size), int(config.data.seq_len), mesh, layout)
    # Nothing is written to workdir until the data, model, optimizer and checkpoint are built
    # and restored, so a failed invocation leaves a finished run's records as they were.
    total_steps = int(config.train.steps)
    data = data or make_training_data(config.data, seed=int(config.seed))
    data.train = training_batches(config, data.train)  # data.min_doc_tokens, train.curriculum
    setup = setup or ModelSetup(decoder_from_config(config, data.tokenizer.vocab_size))
    graphdef, params, frozen = nnx.split(setup.model, setup.trainable, ...)
    frozen = frozen if len(jax.tree.leaves(frozen)) else None
    eval_graphdef = graphdef
    if setup.eval_model is not None:
        eval_graphdef = nnx.split(setup.eval_model, setup.trainable, ...)[0]
    tx = make_optimizer(config.optim, total_steps)
    schedule = learning_rate_schedule(config.optim, total_steps)
    state: TrainState = distributed.shard_state(init_train_state(params, tx), mesh)
    if mesh is not None and frozen is not None:  # the frozen base, placed by its logical axes
        frozen = jax.device_put(frozen, sharding.state_shardings(frozen, mesh))
    trainable_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    num_params = trainable_params + sum(int(np.prod(x.shape)) for x in jax.tree.leaves(frozen))

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=int(config.train.keep_checkpoints),
                                save_every=int(config.train.checkpoint_every))
    latest, restored = checkpointer.restore_latest(abstract_like(state))
    if latest is not None:
        state = restored
        print(f"resumed from checkpoint step {latest} in {checkpointer.directory}")
    elif config.train.get("init_from"):
        params, source_step = init_params_from(state.params, config.train.init_from)
        state = distributed.shard_state(init_train_state(params, tx), mesh)
        print(f"initialised from {config.train.init_from} (step {source_step}); fresh optimizer")

    use_segment_ids = bool(config.data.get("use_segment_ids", True))
    loss_chunk = config.train.get("loss_chunk")
    if loss_chunk is not None and int(config.data.seq_len) % int(loss_chunk):
        raise ValueError(f"config.train.loss_chunk {loss_chunk} does not divide data.seq_len "
                         f"{config.data.seq_len}")
    train_step = make_train_step(graphdef, tx, use_segment_ids=use_segment_ids, frozen=frozen,
                                 loss_chunk=None if loss_chunk is None else int(loss_chunk))
    eval_step = make_eval_step(eval_graphdef, use_segment_ids=use_segment_ids, frozen=frozen)
    train_step, eval_step = (distributed.on_mesh(f, mesh, layout) for f in (train_step, eval_step))
    start_step = int(state.step)
    write_atomically(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    writer = MetricsWriter(workdir, resume_step=start_step)  # drops records of rolled-back steps
    end_step = total_steps if stop_at_step is None else min(total_steps, stop_at_step)
    tokens_per_step = int(config.data.batch_size) * int(config.data.seq_len)
    log_every, eval_every = int(config.train.log_every), int(config.train.eval_every)
    recent_losses: list[jax.Array] = []
    val: dict[str, float] = {}
    run_start = window_start = time.perf_counter()
    window_tokens = 0
    progress = tqdm(range(start_step, end_step), initial=start_step, total=total_steps,
                    desc="train", unit="step", dynamic_ncols=True)
    for step in progress:
        state, metrics = train_step(state, data.train_batch(step))
        recent_losses.append(metrics["train_loss"])
        window_tokens += tokens_per_step
        done = step + 1
        if done % log_every == 0 or done == total_steps or done % eval_every == 0:
            train_loss = float(np.mean(jax.device_get(recent_losses)))
            elapsed = time.perf_counter() - window_start
            record = {"train_loss": train_loss, "grad_norm": float(metrics["grad_norm"]),
                      "learning_rate": float(schedule(step)), "tokens_per_sec": window_tokens / elapsed,
                      **peak_memory_gib()}
            recent_losses, window_tokens, window_start = [], 0, time.perf_counter()
            if done % eval_every == 0 or done == total_steps:
                val = validation_metrics(eval_step, state.params, data)
                record.update(val)
            writer.write(done, record)
            progress.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{record['tokens_per_sec']:.0f}",
                                 **({"val_bpb": f"{val['val_bpb']:.3f}"} if "val_bpb" in record else {}))
        if checkpointer.should_save(done) or done == total_steps:
            checkpointer.save(done, state)
    progress.close()
    writer.close()
    checkpointer.close()

    summary = {
        "steps": int(state.step),
        "num_params": num_params,
        "trainable_params": trainable_params,
        "tokens_seen": int(state.step) * tokens_per_step,
        "wall_seconds_this_process": time.perf_counter() - run_start,
        **peak_memory_gib(),
        **({"unigram_bpb": data.unigram_bpb} if data.unigram_bpb is not None else {}),
        **setup.info,
        **{f"final_{k}": v for k, v in val.items()},
    }
    if int(state.step) == total_steps and not val:
        final = validation_metrics(eval_step, state.params, data)
        summary.update({f"final_{k}": v for k, v in final.items()})
    _write_summary(workdir, summary)
    return {"state": state, "graphdef": graphdef, "frozen": frozen, **summary}
