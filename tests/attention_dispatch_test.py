"""`dispatch.attend`: every registered implementation agrees with the oracle; "auto" policy."""

import chex
import jax
import numpy as np
import pytest

from longctx_jax.attention import dense, dispatch
from longctx_jax.attention.spec import AttentionSpec, implementation
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
    # One decoded token against a long cache: the decode kernel (one pass over the cache in
    # place); where it cannot be built or take the spec, small logits go to the oracle.
    decode_built = dispatch._importable("cpu_decode")
    assert choose(1, 65536, {"q_positions": np.zeros(1, int)}, backend="cpu") == (
        "cpu_decode" if decode_built else "dense")
    assert choose(16, 65536, {"sinks": 4, "window": 8}, backend="cpu") == (
        "cpu_decode" if decode_built else "dense")
    # On the CPU only a decode step's few rows go to the oracle: from 17 rows on, and for every
    # training-size call (segment ids at 2048 tokens), blockwise is faster (AutoPolicy's doc).
    assert choose(17, 4096, {"q_positions": np.zeros(1, int)}, backend="cpu") == "blockwise"
    assert choose(2048, 2048, {"segment_ids": np.zeros(1, int)}, backend="cpu") == "blockwise"
    assert choose(1, 65536, {"bias": np.zeros(1)}, backend="cpu") == "dense"
    assert choose(4096, 4096, {"q_positions": np.zeros(1, int)}, backend="cpu") == "blockwise"
    # A CPU kernel that cannot be imported (as cpu_flash without a compiler) falls back by length.
    monkeypatch.setitem(dispatch.REGISTRY, "unbuildable",
                        dispatch.Implementation("unbuildable", "no_such_module:attention"))
    without_kernel = dispatch.AutoPolicy(cpu="unbuildable", cpu_dense_max_len=8192)
    assert choose(4096, 4096, backend="cpu", policy=without_kernel) == "dense"
    assert choose(16384, 16384, backend="cpu", policy=without_kernel) == "blockwise"
    assert choose(4096, 4096, backend="tpu") == "flash"
    assert choose(4096, 4096, {"bias": np.zeros(1)}, backend="tpu") == "blockwise"
    assert choose(4096, 4096, backend="gpu") in ("flash", "cudnn")
    cudnn_only = dispatch.AutoPolicy(gpu="cudnn", gpu_fallback="cudnn")
    assert choose(64, 64, {"logit_soft_cap": 30.0}, backend="gpu", policy=cudnn_only) == "dense"
    assert choose(4096, 4096, {"logit_soft_cap": 30.0}, backend="gpu", policy=cudnn_only) == "blockwise"
    q, k, v = _qkv(2)
    out = dispatch.attend(q, k, v, impl="auto", auto={"cpu_dense_max_len": 64}, window=3)
    chex.assert_trees_all_close(out, dense.attention(q, k, v, window=3), atol=1e-5)


def test_register_adds_an_implementation():
    q, k, v = _qkv()
    refusing = implementation(name="oracle_copy", unsupported={"bias"})(
        lambda q, k, v, spec: dense.attention(q, k, v, spec)
    )
    dispatch.register("oracle_copy", refusing)
    try:
        chex.assert_trees_all_close(dispatch.attend(q, k, v, impl="oracle_copy"), dense.attention(q, k, v))
        assert dispatch.entry("oracle_copy").unsupported == {"bias"}
        assert not dispatch.entry("oracle_copy").takes(AttentionSpec(bias=np.zeros((1, 1, T, T))))
        with pytest.raises(ValueError, match="oracle_copy.*bias"):
            dispatch.attend(q, k, v, impl="oracle_copy", bias=np.zeros((1, 1, T, T)))
    finally:
        dispatch.REGISTRY.pop("oracle_copy")


def test_every_entry_declares_what_it_refuses():
    # The registry's knowledge comes from the implementations' own declarations.
    assert dispatch.entry("dense").unsupported == frozenset()
    assert dispatch.entry("blockwise").unsupported == frozenset()
    assert dispatch.entry("flash").unsupported == {"bias", "mask"}
    assert "logit_soft_cap" in dispatch.entry("xla").unsupported
    assert {"sinks", "q_positions", "mask"} <= dispatch.entry("cudnn").unsupported
    assert dispatch.entry("ring").unsupported == {"bias", "mask"}


@pytest.mark.parametrize("impl", ["dense", "blockwise", "auto"])
def test_attend_with_lse_matches_logsumexp(impl):
    q, k, v = _qkv(3)
    spec = AttentionSpec(window=4, segment_ids=np.array([[0] * 6 + [1] * 5] * B))
    out, lse = jax.jit(lambda q, k, v: dispatch.attend_with_lse(q, k, v, spec, impl=impl))(q, k, v)
    chex.assert_trees_all_close(out, dense.attention(q, k, v, spec), atol=1e-5)
    G = N // K
    logits = np.einsum("btnh,bsnh->bnts", q, np.repeat(k, G, axis=2)) / np.sqrt(H)
    pos = np.arange(T)
    seg = spec.segment_ids
    allowed = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < 4)
    allowed = allowed[None, None] & (seg[:, None, :, None] == seg[:, None, None, :])
    expected = np.log(np.sum(np.where(allowed, np.exp(logits), 0.0), axis=-1)).transpose(0, 2, 1)
    chex.assert_trees_all_close(lse, expected, atol=1e-5)


def test_attend_with_lse_refuses_an_implementation_without_one():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="log-sum-exp"):
        dispatch.attend_with_lse(q, k, v, impl="xla")


H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"


@pytest.mark.parametrize(
    "fields, dtype, head_dim, device, want",
    [
        ({}, "bfloat16", 128, dict(device_kind=H100), "cudnn"),
        ({"window": 4096}, "bfloat16", 128, dict(device_kind=H100), "cudnn"),  # local_window_size
        ({"causal": False}, "float16", 64, dict(device_kind="NVIDIA H200"), "cudnn"),
        ({}, "bfloat16", 256, dict(capability="9.0"), "cudnn"),
        ({}, "bfloat16", 128, dict(device_kind="NVIDIA B200"), "cudnn"),
        ({}, "bfloat16", 128, dict(capability="10.0"), "cudnn"),
        # What cuDNN does not express natively stays on the Triton flash kernel.
        ({"causal": False, "window": 64}, "bfloat16", 128, dict(device_kind=H100), "flash"),
        ({"window": 64, "sinks": 4}, "bfloat16", 128, dict(device_kind=H100), "flash"),
        ({"segment_ids": np.zeros((1, 8), int)}, "bfloat16", 128, dict(device_kind=H100), "flash"),
        ({"alibi_slopes": alibi_slopes(4)}, "bfloat16", 128, dict(device_kind=H100), "flash"),
        ({"logit_soft_cap": 30.0}, "bfloat16", 128, dict(device_kind=H100), "flash"),
        ({"q_positions": np.arange(8)}, "bfloat16", 128, dict(device_kind=H100), "flash"),
        ({}, "float32", 128, dict(device_kind=H100), "flash"),
        ({}, "bfloat16", 100, dict(device_kind=H100), "flash"),
        ({}, "bfloat16", 512, dict(device_kind=H100), "flash"),
        # Before Hopper: Triton flash for everything.
        ({}, "bfloat16", 128, dict(device_kind=A100), "flash"),
        ({}, "bfloat16", 128, dict(capability="8.9"), "flash"),
        ({}, "bfloat16", 128, dict(device_kind="some future accelerator"), "flash"),
        # A bias goes to the fallback whatever the GPU (neither flash nor cudnn natively).
        ({"bias": np.zeros((1, 1, 8, 8))}, "bfloat16", 128, dict(device_kind=H100), "blockwise"),
    ],
)
def test_auto_routes_hopper_to_cudnn_for_what_it_expresses(fields, dtype, head_dim, device, want):
    got = dispatch.choose(8192, 8192, fields, backend="cuda", dtype=jax.numpy.dtype(dtype), head_dim=head_dim,
                          **device)
    assert got == want


def test_auto_hopper_choice_follows_the_policy():
    triton_everywhere = dispatch.AutoPolicy(gpu_hopper="flash")
    assert dispatch.choose(8192, 8192, backend="gpu", device_kind=H100, policy=triton_everywhere) == "flash"
    assert dispatch.choose(8192, 8192, backend="rocm", capability="9.4") == "flash"  # no cuDNN on ROCm
    assert dispatch.cudnn_expresses(AttentionSpec(window=8)) and not dispatch.cudnn_expresses(
        AttentionSpec(causal=False, window=8))
    with pytest.raises(ValueError, match="compute capability.*'nine'"):
        dispatch.choose(8192, 8192, backend="gpu", capability="nine")


@pytest.mark.parametrize("kind, capability, want", [
    ("NVIDIA H100 80GB HBM3", None, (9, 0)), ("NVIDIA GH200 480GB", None, (9, 0)),
    ("NVIDIA H800", None, (9, 0)), ("NVIDIA B200", None, (10, 0)), ("NVIDIA A100-SXM4-40GB", None, None),
    ("Tesla V100-SXM2-16GB", None, None), (None, "8.6", (8, 6)), ("NVIDIA H100 PCIe", "9.0", (9, 0)),
])
def test_compute_capability_from_device_descriptions(kind, capability, want):
    assert dispatch.compute_capability(kind, capability) == want


def test_flash_has_lse_and_backward_entries():
    q, k, v = _qkv(4)
    spec = AttentionSpec(window=5, segment_ids=np.array([[0] * 6 + [1] * 5] * B))
    got = dispatch.attend_with_lse(q, k, v, spec, impl="flash", block_q=16, block_k=16)
    chex.assert_trees_all_close(got, dense.attention_with_lse(q, k, v, spec), atol=1e-5, rtol=1e-5)
    assert dispatch.entry("flash").backward().__name__ == "flash_attention_backward"
    assert dispatch.entry("cpu_flash").backward().__name__ == "blockwise_attention_backward"
    with pytest.raises(ValueError, match="no backward.*blockwise"):
        dispatch.entry("dense").backward()
