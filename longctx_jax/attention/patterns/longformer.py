"""Longformer attention (Beltagy, Peters & Cohan 2020, "Longformer: The Long-Document Transformer").

Each token attends to a local window; a few task-chosen "global" tokens (e.g. [CLS], the
question tokens) attend to every token and are attended to by every token:
    allowed(q, k) = |q - k| < window  or  q in globals  or  k in globals
(`window` keys on each side, own position included, i.e. a span of 2 window - 1; the paper's
w = 512 span is window = 256.) With `causal=True` every pair additionally needs k <= q.
The paper's dilated windows are LongNet-style dilation (see `dilated.py`).
"""

import dataclasses

import jax.numpy as jnp

from longctx_jax.typing import Array


@dataclasses.dataclass(frozen=True)
class Longformer:
    """Local window + global tokens, as a mask callable on true positions.

    Attributes:
      window: keys visible on each side of a query (own position included), >= 1.
      global_positions: positions of the global tokens.
      causal: if True, also require k <= q.
    """

    window: int
    global_positions: tuple[int, ...] = ()
    causal: bool = False

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        object.__setattr__(self, "global_positions", tuple(int(p) for p in self.global_positions))

    def __call__(self, q_positions_Bt: Array, k_positions_Bs: Array) -> Array:
        """Boolean `[B, 1, t, s]`."""
        q = jnp.asarray(q_positions_Bt)[:, :, None]
        k = jnp.asarray(k_positions_Bs)[:, None, :]
        ok = jnp.abs(q - k) < self.window
        if self.global_positions:
            g = jnp.asarray(self.global_positions)
            ok = ok | jnp.isin(q, g) | jnp.isin(k, g)
        if self.causal:
            ok = ok & (k <= q)
        return ok[:, None]
