"""AdamW with linear warmup, cosine decay and global-norm gradient clipping (optax)."""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax


def learning_rate_schedule(optim_cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then cosine decay to `learning_rate * final_lr_fraction`."""
    peak = float(optim_cfg["learning_rate"])
    warmup = int(optim_cfg.get("warmup_steps", 0))
    if total_steps <= 0:
        raise ValueError(f"total training steps must be positive, got {total_steps}")
    if not 0 <= warmup < total_steps:
        raise ValueError(f"optim.warmup_steps ({warmup}) must be in [0, total steps = {total_steps})")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total_steps,
        end_value=peak * float(optim_cfg.get("final_lr_fraction", 0.1)),
    )


def _decay_mask(params):
    # Matrices decay; norm scales and biases (rank < 2) do not.
    return jax.tree.map(lambda p: np.ndim(p) >= 2, params)


def make_optimizer(optim_cfg: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
    """The optax chain described by `config.optim`."""
    return optax.chain(
        optax.clip_by_global_norm(float(optim_cfg.get("grad_clip_norm", 1.0))),
        optax.adamw(
            learning_rate_schedule(optim_cfg, total_steps),
            b1=float(optim_cfg.get("b1", 0.9)), b2=float(optim_cfg.get("b2", 0.95)),
            eps=float(optim_cfg.get("eps", 1e-8)),
            weight_decay=float(optim_cfg.get("weight_decay", 0.1)), mask=_decay_mask,
        ),
    )
