"""Array aliases used across the package.

Letter legend for shapes in names and einsum strings:
  B batch, T query time, S key time, N query heads, K key/value heads,
  G query heads per key/value head (N = K * G), H head dim, D model dim,
  F MLP hidden dim, V vocabulary, L layers.
"""

from typing import Any

import jax
import numpy as np

Array = jax.Array
ArrayLike = jax.Array | np.ndarray
PRNGKey = jax.Array
PyTree = Any
