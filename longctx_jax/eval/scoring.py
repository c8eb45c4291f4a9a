"""Jitted scoring of a language model: per-token NLL and teacher-forced answer match.

Every evaluator is generic over a model callable

    model(tokens_BT, positions_BT) -> logits_BTV        (float32 or castable)

(an NNX module gets `positions_BT=None` for the default positions 0..T-1, as in training)

that is causal: the logits at position t depend only on tokens 0..t. An NNX module (the
from-scratch `Decoder`, or a loaded checkpoint) is split once into a graph definition and a
state, and the state is passed to the jitted function as an argument, so the weights are not
baked into the compiled program and one compilation serves every example of a given shape.

Greedy decoding vs teacher forcing. Greedy decoding of k answer tokens a_1..a_k from a prompt p
produces exactly a_1..a_k iff, for every i,

    argmax_v logits(p, a_1..a_{i-1})[v] == a_i,

because while the first i-1 generated tokens equal a_1..a_{i-1} the greedy context at step i IS
the teacher-forced context (induction on i; both take the first index among ties). A causal
model computes all k of those argmaxes in one forward over p + a_1..a_k, so exact match of the
greedy continuation (its first k tokens, compared as token ids) is `all(argmax == answer)` over
the answer positions. That batches and jits; `tests/eval_scoring_test.py` checks it against an
explicit greedy loop. (Token ids, not strings, are compared: a greedy output that spells the
key with a different tokenization counts as a miss, which the canonical tokenizer never emits
in practice for digit strings.)

Padding: sequences are right-padded to a bucket length. Causality makes the padded tail
invisible to the real positions; only models whose RoPE depends on the sequence length
("dynamic", "longrope") see the bucket length instead of the true one, which is why the
buckets are the requested lengths themselves (see `bucket_length`).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longctx_jax.losses import token_nll
from longctx_jax.positional.rope import check_position_range
from longctx_jax.typing import Array

LogitsFn = Callable[[Array, Array], Array]


def bucket_length(n: int, multiple: int = 128) -> int:
    """`n` rounded up to a multiple of `multiple` (the padded length a sequence is run at)."""
    if n <= 0 or multiple <= 0:
        raise ValueError(f"length and multiple must be positive, got {n} and {multiple}")
    return -(-n // multiple) * multiple


def _token_nll(apply, state, tokens_BT, positions_BT, targets_BT):
    return token_nll(apply(state, tokens_BT, positions_BT), targets_BT)


def _argmax_hits(apply, state, tokens_BT, positions_BT, targets_BT):
    logits = apply(state, tokens_BT, positions_BT)
    return jnp.argmax(logits, axis=-1).astype(targets_BT.dtype) == targets_BT


class EvalModel:
    """A model callable wrapped once, with its jitted scoring functions.

    Build one per model and reuse it across a sweep: each (batch, length) shape compiles once.

    Args:
      model: an `nnx.Module` or any callable `model(tokens_BT, positions_BT) -> logits_BTV`.
    """

    def __init__(self, model: nnx.Module | LogitsFn):
        if isinstance(model, EvalModel):
            raise ValueError("model is already an EvalModel; pass it directly to the evaluators")
        pattern = getattr(getattr(model, "cfg", None), "pattern", None)
        if getattr(pattern, "training_only", False):
            raise ValueError(f"attention pattern {pattern.name!r} is for training only; evaluate the model "
                             "with full attention (model.cfg.replace(attention_pattern='full', "
                             "attention_options=None))")
        if isinstance(model, nnx.Module):
            graphdef, state = nnx.split(model)

            def apply(state, tokens_BT, positions_BT):
                return nnx.merge(graphdef, state)(tokens_BT, positions_BT)
        else:
            state = None

            def apply(state, tokens_BT, positions_BT):
                del state
                if positions_BT is None:  # a plain callable always gets explicit positions
                    positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1], dtype=jnp.int32),
                                                    tokens_BT.shape)
                return model(tokens_BT, positions_BT)
        self.state: Any = state
        self._nll = jax.jit(lambda s, t, p, y: _token_nll(apply, s, t, p, y))
        self._hits = jax.jit(lambda s, t, p, y: _argmax_hits(apply, s, t, p, y))
        self.logits = lambda tokens_BT, positions_BT: apply(self.state, tokens_BT, positions_BT)

    def token_nll(self, tokens_BT: np.ndarray, targets_BT: np.ndarray,
                  positions_BT: np.ndarray | None = None) -> np.ndarray:
        """Negative log-likelihood of `targets_BT` given `tokens_BT`, float32 `[B, T]` (nats)."""
        tokens_BT, positions_BT = _inputs(tokens_BT, positions_BT)
        return np.asarray(self._nll(self.state, tokens_BT, positions_BT, jnp.asarray(targets_BT, jnp.int32)))

    def argmax_hits(self, tokens_BT: np.ndarray, targets_BT: np.ndarray,
                    positions_BT: np.ndarray | None = None) -> np.ndarray:
        """bool `[B, T]`: whether the argmax next token at each position equals the target."""
        tokens_BT, positions_BT = _inputs(tokens_BT, positions_BT)
        return np.asarray(self._hits(self.state, tokens_BT, positions_BT, jnp.asarray(targets_BT, jnp.int32)))


def as_eval_model(model: "nnx.Module | LogitsFn | EvalModel") -> EvalModel:
    """`model` itself if it is an `EvalModel`, else a new one wrapping it."""
    return model if isinstance(model, EvalModel) else EvalModel(model)


def _inputs(tokens_BT, positions_BT):
    tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
    if tokens_BT.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {tokens_BT.shape}")
    if positions_BT is None:
        # Default positions 0..T-1 stay implicit: the decoder then runs attention without explicit
        # positions, which lets "auto" pick the fused kernels (cpu_flash on a CPU).
        return tokens_BT, None
    check_position_range(positions_BT)  # before the int32 cast, which would wrap silently
    return tokens_BT, jnp.asarray(positions_BT, jnp.int32)


def answers_match(
    model: "nnx.Module | LogitsFn | EvalModel",
    sequences: list[np.ndarray],
    answer_starts: list[int],
    *,
    length: int | None = None,
    batch_size: int = 1,
    pad_id: int = 0,
) -> np.ndarray:
    """Greedy exact match of each sequence's answer, by teacher-forced argmax (see module doc).

    Args:
      model: the model (wrapped with `EvalModel` if it is not one).
      sequences: token ids, prompt followed by answer, one array per example.
      answer_starts: index of the first answer token in each sequence (>= 1).
      length: padded length the inputs run at (default: the longest sequence minus one,
        rounded up by `bucket_length`); fixed per sweep cell so nothing recompiles.
      batch_size: examples per forward; the last batch is padded with copies.
      pad_id: token id used for right padding.

    Returns:
      bool `[len(sequences)]`: True where every answer token is the argmax next token.
    """
    em = as_eval_model(model)
    if len(sequences) != len(answer_starts):
        raise ValueError(f"{len(sequences)} sequences but {len(answer_starts)} answer starts")
    if not sequences:
        return np.zeros((0,), bool)
    if length is None:
        length = bucket_length(max(len(s) for s in sequences) - 1)
    inputs = np.full((len(sequences), length), pad_id, np.int32)
    targets = np.full((len(sequences), length), pad_id, np.int32)
    scored = np.zeros((len(sequences), length), bool)
    for i, (seq, start) in enumerate(zip(sequences, answer_starts, strict=True)):
        seq = np.asarray(seq, np.int32)
        if not 1 <= start < len(seq):
            raise ValueError(f"answer start {start} must be in [1, {len(seq)}) for a sequence of {len(seq)}")
        if len(seq) - 1 > length:
            raise ValueError(f"sequence of {len(seq)} tokens does not fit length {length} (+1 target)")
        inputs[i, : len(seq) - 1] = seq[:-1]
        targets[i, : len(seq) - 1] = seq[1:]
        scored[i, start - 1 : len(seq) - 1] = True
    out = np.zeros((len(sequences),), bool)
    for lo in range(0, len(sequences), batch_size):
        idx = np.arange(lo, lo + batch_size).clip(max=len(sequences) - 1)
        hits = em.argmax_hits(inputs[idx], targets[idx])
        ok = np.all(hits | ~scored[idx], axis=-1)
        n = min(batch_size, len(sequences) - lo)
        out[lo : lo + n] = ok[:n]
    return out
