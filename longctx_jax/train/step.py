"""Pure, jitted training and evaluation steps over a split NNX model.

The model is split once (`nnx.split`) into a static graph definition and a parameter state;
the steps are pure functions of `TrainState` that `nnx.merge` inside, so `jax.jit` sees
plain pytrees and the state buffers are donated.

With a partial set of trainable parameters (LoRA: `nnx.split(model, nnx.LoRAParam, ...)`),
`TrainState.params` holds only the trainable ones and the rest (`frozen`) is an argument
of the jitted steps (not donated, not differentiated, not checkpointed).

Batches are dicts of `[batch, length]` arrays: `inputs`, `targets`, `positions`,
`segment_ids`, `loss_mask` (0 on padding and across document boundaries) and, for
bits-per-byte, `target_bytes` (UTF-8 bytes each target token stands for).
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from longctx_jax import sharding
from longctx_jax.losses import masked_mean, token_nll
from longctx_jax.typing import Array


class TrainState(NamedTuple):
    """Everything that changes during training (and is checkpointed)."""

    step: Array
    params: nnx.State
    opt_state: optax.OptState


def init_train_state(params: nnx.State, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def _with_sharding(tree: Any, shardings: Any) -> Any:
    """`tree`'s leaves as `ShapeDtypeStruct`s with the sharding at their prefix in `shardings`."""
    def one(sharding_, subtree):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_), subtree)

    return jax.tree.map(one, shardings, tree)


def abstract_train_state(params: nnx.State, tx: optax.GradientTransformation,
                         mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh) -> TrainState:
    """`init_train_state(params, tx)` as sharded `ShapeDtypeStruct`s, no memory allocated: the
    parameters and every optimizer leaf shaped like them (Adam's moments) laid out by
    `sharding.state_shardings` on `mesh`, everything else (step, counts) replicated. What
    `jit(...).lower(...)` takes to compile a train step for a model without its weights.

    Raises:
      ValueError: a parameter dim is not divisible by its mesh axes (`sharding.state_shardings`).
    """
    state = jax.eval_shape(lambda p: init_train_state(p, tx), params)
    param_shardings = sharding.state_shardings(params, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params_def = jax.tree.structure(state.params)

    def like_params(tree) -> bool:
        return jax.tree.structure(tree) == params_def

    return state._replace(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        params=_with_sharding(state.params, param_shardings),
        opt_state=jax.tree.map(
            lambda t: _with_sharding(t, param_shardings if like_params(t) else replicated),
            state.opt_state, is_leaf=like_params),
    )


def chunked_logits_nll(model: nnx.Module, h_BTD: Array, targets_BT: Array, chunk: int) -> Array:
    """Per-token NLL `[B, T]` from the last hidden states, `chunk` positions of logits at a time.

    The `[B, T, V]` float32 logits of a long sequence dominate a train step's memory (SmolLM2 at
    8192 tokens: 1.5 GiB per copy, and the backward keeps several). Here each chunk's logits are
    computed, scored and dropped (`lax.map`), and rematerialised in the backward
    (`jax.checkpoint`), so at most `[B, chunk, V]` is live; the result equals `token_nll` of the
    full logits up to float rounding.

    Args:
      model: a `Decoder` (its `logits`: final norm + output layer).
      h_BTD: hidden states before the final norm (`Decoder.hidden`).
      targets_BT: int target ids.
      chunk: positions per chunk; must divide T.

    Raises:
      ValueError: `chunk` is not positive or does not divide T.
    """
    B, T, D = h_BTD.shape
    if chunk <= 0 or T % chunk:
        raise ValueError(f"loss_chunk {chunk} must be a positive divisor of the sequence length {T}")
    graphdef, state = nnx.split(model)

    @jax.checkpoint
    def one(h_BCD: Array, t_BC: Array) -> Array:
        return token_nll(nnx.merge(graphdef, state).logits(h_BCD), t_BC)

    n = T // chunk
    h_NBCD = h_BTD.reshape(B, n, chunk, D).swapaxes(0, 1)
    t_NBC = targets_BT.reshape(B, n, chunk).swapaxes(0, 1)
    nll_NBC = jax.lax.map(lambda xs: one(*xs), (h_NBCD, t_NBC))
    return nll_NBC.swapaxes(0, 1).reshape(B, T)


def batch_nll(
    graphdef: nnx.GraphDef, params: nnx.State, batch: dict[str, Array], *, use_segment_ids: bool,
    frozen: nnx.State | None = None, loss_chunk: int | None = None,
) -> Array:
    """Per-token negative log-likelihood `[batch, length]` (float32) of the batch's targets.

    `frozen`: the parameters outside `params` when the model was split into trainable and
    frozen parts (None: `params` is the whole model). `loss_chunk`: score the logits that many
    positions at a time (`chunked_logits_nll`; the model must be a `Decoder`); None: at once.
    """
    model = nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)
    segment_ids = batch["segment_ids"] if use_segment_ids else None
    if loss_chunk is None:
        return token_nll(model(batch["inputs"], batch["positions"], segment_ids), batch["targets"])
    if not all(hasattr(model, a) for a in ("embed_tokens", "hidden", "logits")):
        raise ValueError(f"loss_chunk needs a Decoder (embed_tokens / hidden / logits); "
                         f"got {type(model).__name__}")
    h_BTD = model.hidden(model.embed_tokens(batch["inputs"]), batch["positions"], segment_ids)
    return chunked_logits_nll(model, h_BTD, batch["targets"], int(loss_chunk))


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *, use_segment_ids: bool,
    frozen: nnx.State | None = None, loss_chunk: int | None = None,
) -> Callable[[TrainState, dict[str, Array]], tuple[TrainState, dict[str, Array]]]:
    """A jitted `(state, batch) -> (state, metrics)` with the state donated.

    `frozen`: parameters that take no gradient (see `batch_nll`), passed to every call.
    `loss_chunk`: positions of logits computed at a time (`chunked_logits_nll`); None: all.
    """

    def loss_fn(params, batch, frozen):
        nll = batch_nll(graphdef, params, batch, use_segment_ids=use_segment_ids, frozen=frozen,
                        loss_chunk=loss_chunk)
        return masked_mean(nll, batch["loss_mask"])

    def train_step(state: TrainState, batch: dict[str, Array], frozen: nnx.State | None):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, frozen)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"train_loss": loss, "grad_norm": optax.global_norm(grads)}
        return TrainState(state.step + 1, params, opt_state), metrics

    if frozen is None:  # a jitted function itself, so it lowers (`bench.memory` compiles it abstractly)
        return jax.jit(functools.partial(train_step, frozen=None), donate_argnums=0)
    return functools.partial(jax.jit(train_step, donate_argnums=0), frozen=frozen)


def make_eval_step(
    graphdef: nnx.GraphDef, *, use_segment_ids: bool, frozen: nnx.State | None = None
) -> Callable[[nnx.State, dict[str, Array]], dict[str, Array]]:
    """A jitted `(params, batch) -> sums` of NLL, predicted tokens and their bytes."""

    def eval_step(params: nnx.State, batch: dict[str, Array], frozen: nnx.State | None):
        nll = batch_nll(graphdef, params, batch, use_segment_ids=use_segment_ids, frozen=frozen)
        mask = batch["loss_mask"].astype(jnp.float32)
        target_bytes = batch.get("target_bytes", batch["loss_mask"]).astype(jnp.float32)
        return {"nll_sum": jnp.sum(nll * mask), "tokens": jnp.sum(mask),
                "bytes": jnp.sum(target_bytes * mask)}

    if frozen is None:
        return jax.jit(functools.partial(eval_step, frozen=None))
    return functools.partial(jax.jit(eval_step), frozen=frozen)


def summarize_eval(sums: dict[str, Any]) -> dict[str, float]:
    """val_loss (nats/token), val_ppl and val_bpb (bits per UTF-8 byte) from summed eval steps."""
    tokens = float(sums["tokens"])
    if tokens == 0:
        raise ValueError("evaluation saw no predicted tokens; is the validation split empty?")
    loss = float(sums["nll_sum"]) / tokens
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
            "val_bpb": float(sums["nll_sum"]) / (math.log(2.0) * float(sums["bytes"]))}
