"""Next-token negative log-likelihood: the one definition training, evaluation and search share.

For logits `z_t` over the vocabulary at position t and the target token `y_t`,

    nll_t = log sum_v exp(z_t[v]) - z_t[y_t] = -log softmax(z_t)[y_t]      (nats)

computed in float32 after subtracting the row maximum (held out of the gradient), which is
`optax.softmax_cross_entropy_with_integer_labels`. Everything that reports a loss, a
perplexity or bits per byte (`train/step.py`, `eval/scoring.py` and through it
`eval/perplexity.py` and the reproduction protocols, `search/longrope.py`) calls
`token_nll`; masked means use `masked_mean`.

This module sits at the bottom layer (next to `typing.py`): it imports only JAX and optax, so
both `train` and `eval` may use it.
"""

import jax.numpy as jnp
import optax

from longctx_jax.typing import Array


def token_nll(logits_XV: Array, targets_X: Array) -> Array:
    """Per-position next-token NLL in nats.

    Args:
      logits_XV: float logits `[..., V]` (any leading shape X, e.g. `[B, T]` or `[B]`).
      targets_X: int target ids with the leading shape X of the logits.

    Returns:
      float32 `[...]` (shape X): `logsumexp(logits) - logits[target]` at each position.
    """
    if tuple(targets_X.shape) != tuple(logits_XV.shape[:-1]):
        raise ValueError(f"targets shape {tuple(targets_X.shape)} must equal the logits' leading shape "
                         f"{tuple(logits_XV.shape[:-1])} (logits {tuple(logits_XV.shape)})")
    return optax.softmax_cross_entropy_with_integer_labels(logits_XV.astype(jnp.float32), targets_X)


def masked_mean(values_X: Array, mask_X: Array) -> Array:
    """Mean of `values_X` over positions where `mask_X` is nonzero (0 when the mask is empty).

    Args:
      values_X: float values, any shape X.
      mask_X: weights of the same shape (0/1 or bool).

    Returns:
      float32 scalar `sum(values * mask) / max(sum(mask), 1)`.
    """
    mask = mask_X.astype(jnp.float32)
    return jnp.sum(values_X * mask) / jnp.maximum(jnp.sum(mask), 1.0)
