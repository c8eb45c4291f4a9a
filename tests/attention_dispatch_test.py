"""`dispatch.attend`: every registered implementation agrees with the oracle; "auto" policy."""

import chex
import jax
import numpy as np
import pytest

from longctx_jax.attention import dense, dispatch
from longctx_jax.positional.alibi import alibi_slopes

B, T, N, K, H = 2, 11, 4, 2, 8


def _qkv(seed=0):
    r = np.random.default_rng(seed)
    return (
        r.normal(size=(B, T, N, H)).astype(np.float32),
        r.normal(size=(B, T, K, H)).astype(np.float32),
        r.normal(size=(B, T, K, H)).astype(np.float32),
    )


KWARGS = {
    "causal": dict(),
    "window": dict(causal=False, window=4),
    "everything_but_softcap": dict(
        window=5, sinks=1, alibi_slopes=alibi_slopes(N), segment_ids=np.array([[0] * 6 + [1] * 5] * B),
        q_positions=np.arange(T) + 2, k_positions=np.arange(T) + 2, scale=0.4,
    ),
}


@pytest.mark.parametrize(
    "impl,case", [("xla", "everything_but_softcap"), ("xla", "window"), ("xla", "causal"), ("auto", "causal")]
)
def test_implementations_match_oracle(impl, case):
    q, k, v = _qkv()
    kw = KWARGS[case]
    out = jax.jit(lambda q, k, v: dispatch.attend(q, k, v, impl=impl, **kw))(q, k, v)
    chex.assert_trees_all_close(out, dense.attention(q, k, v, **kw), atol=1e-5)


def test_xla_zeroes_fully_masked_rows_and_rejects_softcap():
    q, k, v = _qkv(1)
    mask = np.ones((1, 1, T, T), bool)
    mask[..., 2, :] = False
    out = jax.jit(lambda q, k, v: dispatch.attend(q, k, v, impl="xla", causal=False, mask=mask))(q, k, v)
    np.testing.assert_array_equal(np.asarray(out[:, 2]), 0.0)
    chex.assert_trees_all_close(out, dense.attention(q, k, v, causal=False, mask=mask), atol=1e-5)
    with pytest.raises(ValueError, match="logit_soft_cap"):
        dispatch.attend(q, k, v, impl="xla", logit_soft_cap=5.0)


def test_cudnn_rejects_what_it_cannot_express():
    q, k, v = _qkv()
    for kw in (dict(sinks=2, window=4), dict(segment_ids=np.zeros((B, T), int)), dict(logit_soft_cap=3.0)):
        with pytest.raises(ValueError, match="cudnn"):
            dispatch.attend(q, k, v, impl="cudnn", **kw)


def test_unknown_impl_lists_valid_names():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="blockwise"):
        dispatch.attend(q, k, v, impl="nope")
    assert {"dense", "blockwise", "xla", "cudnn", "flash", "cpu_flash", "auto"} <= set(dispatch.available())


def test_auto_policy(monkeypatch):
    choose = dispatch.choose
    flash_built = dispatch._importable("cpu_flash")
    assert choose(128, 128, backend="cpu") == ("cpu_flash" if flash_built else "dense")
    assert choose(65536, 65536, backend="cpu") == ("cpu_flash" if flash_built else "blockwise")
    assert choose(65536, 65536, {"sinks": 4}, backend="cpu") == "blockwise"
    assert choose(65536, 1, {"q_positions": np.zeros(1)}, backend="cpu") == "blockwise"
    # A CPU kernel that cannot be imported (as cpu_flash without a compiler) falls back by length.
    monkeypatch.setitem(dispatch.LAZY_IMPLEMENTATIONS, "unbuildable", "no_such_module:attention")
    without_kernel = dispatch.AutoPolicy(cpu="unbuildable", cpu_dense_max_len=8192)
    assert choose(4096, 4096, backend="cpu", policy=without_kernel) == "dense"
    assert choose(16384, 16384, backend="cpu", policy=without_kernel) == "blockwise"
    assert choose(4096, 4096, backend="tpu") == "flash"
    assert choose(4096, 4096, {"bias": np.zeros(1)}, backend="tpu") == "blockwise"
    assert choose(4096, 4096, backend="gpu") in ("flash", "cudnn")
    assert choose(64, 64, {"logit_soft_cap": 30.0}, backend="gpu", policy=dispatch.AutoPolicy(gpu="cudnn",
                  gpu_fallback="cudnn")) == "blockwise"
    q, k, v = _qkv(2)
    out = dispatch.attend(q, k, v, impl="auto", auto={"cpu_dense_max_len": 64}, window=3)
    chex.assert_trees_all_close(out, dense.attention(q, k, v, window=3), atol=1e-5)


def test_register_adds_an_implementation():
    q, k, v = _qkv()
    dispatch.register("oracle_copy", dense.attention, unsupported=frozenset({"bias"}))
    try:
        chex.assert_trees_all_close(dispatch.attend(q, k, v, impl="oracle_copy"), dense.attention(q, k, v))
        assert dispatch.UNSUPPORTED["oracle_copy"] == {"bias"}
    finally:
        dispatch.IMPLEMENTATIONS.pop("oracle_copy")
        dispatch.UNSUPPORTED.pop("oracle_copy")
