"""Builds and registers the C++ XLA FFI kernels in this folder (CPU only).

A kernel source `NAME.cc` is compiled on first use with the system C++ compiler (`$CXX`,
else `c++`) against `jax.ffi.include_dir()` into a shared library cached under
`$LONGCTX_JAX_CACHE` (default `~/.cache/longctx_jax`), keyed by the source, the compiler
flags, the jaxlib version and this CPU's feature flags (the library is built with
`-march=native`). The build writes to a temporary file and renames it, so concurrent
processes (pytest-xdist workers) never load a half-written library.
"""

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jaxlib

_SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")


class NativeKernelUnavailable(ImportError):
    """No C++ compiler, or the kernel failed to build (the message says which)."""


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def cache_dir() -> str:
    return os.environ.get("LONGCTX_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "longctx_jax"))


def compiler() -> str | None:
    """The C++ compiler to use, or None when there is none on PATH."""
    return shutil.which(os.environ.get("CXX", "c++"))


def library_path(name: str) -> str:
    """Path of the built library for kernel `name`, building it if needed."""
    source = os.path.join(_SOURCE_DIR, f"{name}.cc")
    with open(source, "rb") as f:
        text = f.read()
    cxx = compiler()
    if cxx is None:
        raise NativeKernelUnavailable(
            f"kernel {name!r} needs a C++17 compiler (set $CXX or install g++/clang++); none found"
        )
    key = hashlib.sha256(
        b"\0".join([text, " ".join(_FLAGS).encode(), jaxlib.__version__.encode(), _cpu_signature().encode(),
                    cxx.encode()])
    ).hexdigest()[:16]
    out_dir = cache_dir()
    target = os.path.join(out_dir, f"{name}-{key}.so")
    if os.path.exists(target):
        return target
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    except OSError as error:
        raise NativeKernelUnavailable(
            f"cannot write kernel {name!r} to {out_dir} ({error}); "
            "set $LONGCTX_JAX_CACHE to a writable directory"
        ) from error
    os.close(fd)
    cmd = [cxx, *_FLAGS, f"-I{jax.ffi.include_dir()}", source, "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NativeKernelUnavailable(
                f"building kernel {name!r} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


_FAILED: dict[str, NativeKernelUnavailable] = {}


@functools.cache
def _register(name: str, symbol: str) -> str:
    library = ctypes.cdll.LoadLibrary(library_path(name))
    target = f"longctx_{name}"
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return target


def register(name: str, symbol: str) -> str:
    """Builds kernel `name`, registers its handler `symbol` as FFI target `longctx_<name>` on CPU.

    A failed build raises `NativeKernelUnavailable` and is remembered, so callers that probe
    for the kernel (dispatch's "auto") do not rerun the compiler.
    """
    if name in _FAILED:
        raise _FAILED[name]
    try:
        return _register(name, symbol)
    except NativeKernelUnavailable as error:
        _FAILED[name] = error
        raise
