"""Length curricula: train on short sequences first, then longer ones, at constant tokens/step.

`config.train.curriculum = [(0, 64), (200, 128), (400, 256)]` trains steps 0..199 at length
64, 200..399 at 128 and 400.. at 256. Every stage keeps the tokens per step of
`data.batch_size * data.seq_len` (batch size = tokens_per_step / seq_len), so the optimizer
sees the same amount of data per update and the learning-rate schedule is unchanged; the
jitted step compiles once per stage (one new batch shape), not once per step. Validation
stays at `data.seq_len`.

Progressive extension (LongRoPE, Ding et al. 2024: extend to L1 with factor s1, then from
that checkpoint to L2 with s2) is two configs chained by `train.init_from`, not a stage list:
the RoPE factor is model structure, so each stage is its own run with its own model config
(see configs/repro_progressive.py).

Each stage's batches are a pure function of the step (see longctx_jax/data/batches.py), so a
resumed run sees the same data as an uninterrupted one.
"""

import dataclasses
from collections.abc import Sequence

import ml_collections
import numpy as np

from longctx_jax.data import Batches
from longctx_jax.train.long_documents import long_documents


@dataclasses.dataclass(frozen=True)
class Stage:
    """Steps `start` .. (next stage's start - 1) train on `batch_size` x `seq_len`."""

    start: int
    seq_len: int
    batch_size: int


def curriculum_stages(curriculum: Sequence[Sequence[int]], tokens_per_step: int) -> list[Stage]:
    """Stages of a `[(start_step, seq_len), ...]` schedule at constant tokens per step.

    Raises:
      ValueError: empty schedule, first stage not at step 0, starts not increasing, or a
        seq_len that does not divide `tokens_per_step`.
    """
    pairs = [(int(s), int(n)) for s, n in curriculum]
    if not pairs or pairs[0][0] != 0:
        raise ValueError(f"train.curriculum must start at step 0, got {pairs}")
    starts = [s for s, _ in pairs]
    if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
        raise ValueError(f"train.curriculum start steps must increase, got {starts}")
    stages = []
    for start, seq_len in pairs:
        if seq_len < 1 or tokens_per_step % seq_len:
            raise ValueError(f"train.curriculum seq_len {seq_len} must divide the tokens per step "
                             f"({tokens_per_step} = data.batch_size * data.seq_len)")
        stages.append(Stage(start, seq_len, tokens_per_step // seq_len))
    return stages


def stage_at(stages: Sequence[Stage], step: int) -> Stage:
    """The stage that trains step `step`."""
    return stages[int(np.searchsorted([s.start for s in stages], step, side="right")) - 1]


class CurriculumBatches:
    """`batch_at(step)` from the stage of `step`: a drop-in for `Batches` in the trainer."""

    def __init__(self, base: Batches, stages: Sequence[Stage]):
        self.stages = list(stages)
        self._by_len = {s.seq_len: Batches(base.docs, s.seq_len, s.batch_size, base.seed, base.pad_id,
                                           base.token_bytes, base.shuffle)
                        for s in self.stages}

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """Each key `[stage batch_size, stage seq_len]`."""
        return self._by_len[stage_at(self.stages, step).seq_len].batch_at(step)


def training_batches(config: ml_collections.ConfigDict, base: Batches) -> Batches | CurriculumBatches:
    """`base` with `data.min_doc_tokens` (long documents only) and `train.curriculum` applied."""
    min_tokens = config.data.get("min_doc_tokens")
    if min_tokens:
        base = Batches(long_documents(base.docs, int(min_tokens)), base.seq_len, base.batch_size,
                       base.seed, base.pad_id, base.token_bytes, base.shuffle)
    curriculum = config.train.get("curriculum")
    if not curriculum:
        return base
    tokens_per_step = int(config.data.batch_size) * int(config.data.seq_len)
    return CurriculumBatches(base, curriculum_stages(curriculum, tokens_per_step))
