"""BigBird block-sparse attention (Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences").

Positions are grouped into blocks of `block` tokens (default 64); block i = position // block.
With nb = ceil(seq_len / block) blocks, query block i may attend to key block j when
    |i - j| <= (num_window_blocks - 1) / 2            sliding blocks (default 3: j = i-1, i, i+1)
    or i in G or j in G                                 global blocks (default 2: G = {0, nb - 1},
                                                        the first ceil(g/2) and last floor(g/2))
    or j in R[h, i]                                     random blocks (default r = 3)
R[h, i] (for head h, non-global query block i) is r blocks drawn without replacement,
seeded (`seed`), from the blocks neither global nor in i's window (all of them when fewer
remain); global rows have no random blocks (they already see everything). This is the
paper's BigBird-ITC layout (Sec. 2, Fig. 1; appendix D). With `causal=True` pairs also
need k <= q. `num_heads > 1` draws independent random blocks per head.
"""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from longctx_jax.typing import Array


@functools.lru_cache(maxsize=64)
def _random_blocks(num_blocks: int, window: int, num_global: int, r: int, heads: int, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    lo_global = -(-num_global // 2)
    hi_global = num_global // 2
    is_global = np.zeros(num_blocks, bool)
    is_global[:lo_global] = True
    if hi_global:
        is_global[num_blocks - hi_global:] = True
    half = (window - 1) // 2
    table = []
    for _ in range(heads):
        rows = []
        for i in range(num_blocks):
            if is_global[i]:
                rows.append(())
                continue
            candidates = [j for j in range(num_blocks) if not is_global[j] and abs(i - j) > half]
            pick = rng.choice(len(candidates), size=min(r, len(candidates)), replace=False)
            rows.append(tuple(sorted(candidates[p] for p in pick)))
        table.append(tuple(rows))
    return tuple(table), tuple(bool(x) for x in is_global)


@dataclasses.dataclass(frozen=True)
class BigBird:
    """BigBird-ITC block layout as a mask callable on true positions.

    Attributes:
      seq_len: sequence length the layout is drawn for (positions >= seq_len are clipped
        into the last block).
      block: tokens per block.
      num_window_blocks: odd number of sliding blocks centred on the query block.
      num_global_blocks: global blocks, split between the start and the end.
      num_random_blocks: random key blocks per query block (r).
      seed: numpy seed of the random blocks (same seed, same layout).
      num_heads: 1 (one layout for all heads) or the number of query heads.
      causal: if True, also require k <= q.
    """

    seq_len: int
    block: int = 64
    num_window_blocks: int = 3
    num_global_blocks: int = 2
    num_random_blocks: int = 3
    seed: int = 0
    num_heads: int = 1
    causal: bool = False

    def __post_init__(self):
        if self.num_window_blocks < 1 or self.num_window_blocks % 2 == 0:
            raise ValueError(f"num_window_blocks must be odd and >= 1, got {self.num_window_blocks}")
        if min(self.seq_len, self.block, self.num_heads) < 1:
            raise ValueError(f"seq_len, block, num_heads must be >= 1, got {self}")
        if self.num_global_blocks < 0 or self.num_random_blocks < 0:
            raise ValueError(f"global and random block counts must be >= 0, got {self}")

    @property
    def num_blocks(self) -> int:
        return -(-self.seq_len // self.block)

    def random_blocks(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """R[h][i]: the random key blocks of query block i in head h."""
        return _random_blocks(
            self.num_blocks, self.num_window_blocks, self.num_global_blocks,
            self.num_random_blocks, self.num_heads, self.seed,
        )[0]

    def global_blocks(self) -> tuple[bool, ...]:
        """Whether each block is global."""
        return _random_blocks(
            self.num_blocks, self.num_window_blocks, self.num_global_blocks,
            self.num_random_blocks, self.num_heads, self.seed,
        )[1]

    def block_layout(self) -> np.ndarray:
        """Boolean `[num_heads, nb, nb]`: which key blocks each query block may attend to."""
        nb = self.num_blocks
        i, j = np.arange(nb)[:, None], np.arange(nb)[None, :]
        is_global = np.asarray(self.global_blocks())
        base = (np.abs(i - j) <= (self.num_window_blocks - 1) // 2) | is_global[:, None] | is_global[None, :]
        layout = np.broadcast_to(base, (self.num_heads, nb, nb)).copy()
        for h, rows in enumerate(self.random_blocks()):
            for qb, cols in enumerate(rows):
                layout[h, qb, list(cols)] = True
        return layout

    def __call__(self, q_positions_Bt: Array, k_positions_Bs: Array) -> Array:
        """Boolean `[B, num_heads, t, s]`."""
        q = jnp.asarray(q_positions_Bt)
        k = jnp.asarray(k_positions_Bs)
        qb = jnp.clip(q // self.block, 0, self.num_blocks - 1)
        kb = jnp.clip(k // self.block, 0, self.num_blocks - 1)
        layout = jnp.asarray(self.block_layout())
        ok = layout[:, qb[:, :, None], kb[:, None, :]].transpose(1, 0, 2, 3)
        if self.causal:
            ok = ok & (k[:, None, None, :] <= q[:, None, :, None])
        return ok
