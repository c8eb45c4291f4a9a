"""The native kernel cache is private and hash-checked (built from a tiny probe kernel)."""

import logging
import os
import stat

import pytest

from longctx_jax.attention.kernels import native

PROBE = 'extern "C" int longctx_probe() { return 42; }\n'

pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A probe kernel source and an empty cache location; returns the cache path."""
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    (source_dir / "probe.cc").write_text(PROBE)
    monkeypatch.setattr(native, "_SOURCE_DIR", str(source_dir))
    cache = tmp_path / "home" / "cache"
    monkeypatch.setenv("LONGCTX_JAX_CACHE", str(cache))
    return cache


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_cache_is_created_private_and_library_hash_recorded(probe):
    path = native.library_path("probe")
    assert mode(probe) == 0o700
    assert mode(path) & 0o077 == 0
    assert open(path + ".sha256").read().strip() == native.file_sha256(path)
    assert native.library_path("probe") == path  # verified, reused


@pytest.mark.parametrize("bits", [0o020, 0o002])
def test_group_or_world_writable_cache_is_refused(probe, bits):
    probe.mkdir(parents=True)
    os.chmod(probe, 0o700 | bits)
    with pytest.raises(native.NativeKernelUnavailable, match="writable by group or others"):
        native.library_path("probe")
    assert os.listdir(probe) == []  # refused before building anything


def test_cache_owned_by_another_user_is_refused(probe, monkeypatch):
    probe.mkdir(parents=True, mode=0o700)
    owner = os.stat(probe).st_uid
    monkeypatch.setattr(native.os, "getuid", lambda: owner + 1)
    with pytest.raises(native.NativeKernelUnavailable, match=f"owned by uid {owner}"):
        native.library_path("probe")


def test_library_that_is_not_private_is_refused(probe):
    path = native.library_path("probe")
    os.chmod(path, 0o777)
    with pytest.raises(native.NativeKernelUnavailable, match="kernel library .* writable by group or others"):
        native.library_path("probe")


@pytest.mark.parametrize("damage", ["append", "truncate", "no_record"])
def test_library_not_matching_its_build_hash_is_rebuilt(probe, caplog, damage):
    path = native.library_path("probe")
    built = open(path, "rb").read()
    if damage == "append":
        with open(path, "ab") as f:
            f.write(b"\x90" * 64)
    elif damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(len(built) // 2)
    else:
        os.remove(path + ".sha256")
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.library_path("probe") == path
    assert "does not match the hash recorded at build time" in caplog.text
    assert native.file_sha256(path) == open(path + ".sha256").read().strip()
    assert os.path.getsize(path) == len(built)


def test_a_changed_local_header_is_a_new_build(probe, tmp_path):
    source_dir = tmp_path / "src"
    (source_dir / "probe_value.h").write_text('#include "probe_inner.h"\n#define PROBE_VALUE INNER\n')
    (source_dir / "probe_inner.h").write_text("#define INNER 42\n")
    (source_dir / "probe.cc").write_text('#include "probe_value.h"\n#include "xla/ffi/api/ffi.h"\n'
                                         'extern "C" int longctx_probe() { return PROBE_VALUE; }\n')
    assert native.local_headers(str(source_dir / "probe.cc")) == [
        str(source_dir / "probe_value.h"), str(source_dir / "probe_inner.h")]  # xla/ is not local
    first = native.library_path("probe")
    assert native.library_path("probe") == first
    (source_dir / "probe_inner.h").write_text("#define INNER 7\n")  # a header two includes deep
    second = native.library_path("probe")
    assert second != first
    import ctypes

    assert ctypes.CDLL(second).longctx_probe() == 7


def test_the_shared_thread_protocol_header_is_in_both_kernels_keys():
    kernels = os.path.dirname(native.__file__)
    shared = os.path.join(kernels, "parallel_run.h")
    models = os.path.join(os.path.dirname(os.path.dirname(kernels)), "models")
    assert native.local_headers(os.path.join(kernels, "cpu_flash_attention.cc")) == [shared]
    assert native.local_headers(os.path.join(models, "cpu_blas_matmul.cc")) == [shared]
