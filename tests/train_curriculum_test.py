"""Length curricula and long-document filtering: stage schedule, constant tokens/step, batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.data import Batches, TokenizedDocs
from longctx_jax.train.curriculum import CurriculumBatches, curriculum_stages, stage_at, training_batches
from longctx_jax.train.long_documents import long_documents
from tests.train_trainer_test import small_config


def toy_docs(lengths):
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.concatenate([np.full(n, i + 3, np.uint16) for i, n in enumerate(lengths)])
    return TokenizedDocs(tokens=tokens, starts=starts)


@pytest.mark.parametrize("tokens_per_step", [256, 1024])
def test_stages_keep_tokens_per_step_and_switch_at_their_steps(tokens_per_step):
    stages = curriculum_stages([(0, 16), (10, 32), (25, 64)], tokens_per_step)
    assert [s.seq_len * s.batch_size for s in stages] == [tokens_per_step] * 3
    expected = {0: 16, 9: 16, 10: 32, 24: 32, 25: 64, 1000: 64}
    assert {step: stage_at(stages, step).seq_len for step in expected} == expected


@pytest.mark.parametrize("bad, match", [([], "start at step 0"), ([(5, 16)], "start at step 0"),
                                        ([(0, 16), (0, 32)], "increase"), ([(0, 48)], "divide")])
def test_bad_schedules_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        curriculum_stages(bad, 256)


def test_curriculum_batches_have_stage_shapes_and_are_deterministic():
    base = Batches(toy_docs([40, 70, 30, 100, 55]), 16, 8, 0, 0, np.ones(300, np.int32))
    batches = CurriculumBatches(base, curriculum_stages([(0, 16), (3, 32), (6, 64)], 128))
    shapes = [batches.batch_at(step)["inputs"].shape for step in range(8)]
    assert shapes == [(8, 16)] * 3 + [(4, 32)] * 3 + [(2, 64)] * 2
    np.testing.assert_array_equal(batches.batch_at(4)["targets"], batches.batch_at(4)["targets"])


def test_train_step_compiles_once_per_stage():
    traces = []

    @jax.jit
    def step(x):
        traces.append(x.shape)
        return jnp.sum(x)

    base = Batches(toy_docs([40, 70, 30, 100, 55]), 16, 8, 0, 0, np.ones(300, np.int32))
    batches = CurriculumBatches(base, curriculum_stages([(0, 16), (3, 32), (6, 64)], 128))
    for s in range(9):
        step(batches.batch_at(s)["inputs"])
    assert traces == [(8, 16), (4, 32), (2, 64)]


def test_long_documents_keeps_only_long_ones_in_order():
    docs = toy_docs([40, 70, 30, 100, 55])
    kept = long_documents(docs, 55)
    assert [len(kept.doc(d)) for d in range(kept.num_docs)] == [70, 100, 55]
    assert [int(kept.doc(d)[0]) for d in range(kept.num_docs)] == [4, 6, 7]
    with pytest.raises(ValueError, match="keeps no document; the longest has 100"):
        long_documents(docs, 101)


def test_training_batches_applies_config():
    config = small_config()
    config.data.seq_len, config.data.batch_size = 32, 4
    base = Batches(toy_docs([40, 70, 30, 100, 55]), 32, 4, 0, 0, np.ones(300, np.int32))
    assert training_batches(config, base) is base
    config.data.min_doc_tokens = 60
    config.train.curriculum = [(0, 16), (2, 64)]
    batches = training_batches(config, base)
    assert batches.batch_at(0)["inputs"].shape == (8, 16)
    assert batches.batch_at(2)["inputs"].shape == (2, 64)
    stream = np.concatenate([b.docs.tokens for b in batches._by_len.values()])
    assert set(np.unique(stream)) == {4, 6}
