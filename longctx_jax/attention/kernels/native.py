"""Builds and registers the C++ XLA FFI kernels in this folder (CPU only).

A kernel source `NAME.cc` is compiled on first use with the system C++ compiler (`$CXX`,
else `c++`) against `jax.ffi.include_dir()` into a shared library cached under
`$LONGCTX_JAX_CACHE` (default `~/.cache/longctx_jax`), keyed by the source and the local
headers it includes (`#include "x.h"` found in the source's folder or this one, which is on the
include path: `parallel_run.h` is shared by every kernel), the compiler flags, the jaxlib
version and this CPU's feature flags. A kernel is built with `-march=native`
unless its caller passes the flags of one instruction set (`cpu_flash_plan.py`) and a build
tag, which then also names the file (`NAME-TAG-KEY.so`). The build writes to a temporary file
and renames it, so concurrent processes (pytest-xdist workers) never load a half-written library.

The cache is private: it is created with mode 0700, and a cache directory (or library) that
is owned by another user or writable by group or others is refused with
`NativeKernelUnavailable` (so "auto" attention falls back) rather than loaded. Each build
records the SHA-256 of the library it produced beside it (`NAME-KEY.so.sha256`); a library
whose bytes no longer match (truncated, replaced, or left without a record) is rebuilt before
anything is loaded.
"""

import ctypes
import functools
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile

import jax
import jaxlib

from longctx_jax import cpu
from longctx_jax.atomic import write_atomically

_SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
NATIVE_FLAGS = ("-march=native",)
_LOG = logging.getLogger(__name__)


class NativeKernelUnavailable(ImportError):
    """No C++ compiler, or the kernel failed to build (the message says which)."""


def _cpu_signature() -> str:
    info = cpu.cpu_info()
    return info.arch + " " + " ".join(sorted(info.flags))


def cache_dir() -> str:
    return os.environ.get("LONGCTX_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "longctx_jax"))


def compiler() -> str | None:
    """The C++ compiler to use, or None when there is none on PATH."""
    return shutil.which(os.environ.get("CXX", "c++"))


def _check_private(path: str, what: str) -> None:
    """Raises NativeKernelUnavailable unless `path` is owned by this user and not group/world-writable."""
    info = os.stat(path)
    problems = []
    if info.st_uid != os.getuid():
        problems.append(f"owned by uid {info.st_uid}, not by this user (uid {os.getuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append(f"writable by group or others (mode {stat.filemode(info.st_mode)})")
    if problems:
        raise NativeKernelUnavailable(
            f"refusing to load native kernels from the {what} {path}: {' and '.join(problems)}; "
            "another user could replace the compiled code. Use `chmod 700` on it (as its owner) or "
            "set $LONGCTX_JAX_CACHE to a directory of your own"
        )


def _private_cache_dir() -> str:
    out_dir = cache_dir()
    try:
        os.makedirs(out_dir, mode=0o700, exist_ok=True)
    except OSError as error:
        raise NativeKernelUnavailable(
            f"cannot create the kernel cache {out_dir} ({error}); "
            "set $LONGCTX_JAX_CACHE to a writable directory"
        ) from error
    _check_private(out_dir, "kernel cache directory")
    return out_dir


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded(target: str) -> str:
    try:
        with open(target + ".sha256", encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _verified(target: str) -> bool:
    """Whether `target` exists, is private, and matches the hash recorded when it was built."""
    if not os.path.exists(target):
        return False
    _check_private(target, "kernel library")
    recorded = _recorded(target)
    if recorded and recorded == file_sha256(target):
        return True
    _LOG.warning("kernel library %s does not match the hash recorded at build time (%s); rebuilding",
                 target, "no record" if not recorded else f"recorded {recorded[:12]}...")
    return False


_LOCAL_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.MULTILINE)


def local_headers(source: str) -> list[str]:
    """The headers `source` includes with quotes that exist in its folder or in this folder, and
    the ones they include, each once, in first-include order (`xla/...` is jaxlib's, not local)."""
    found: list[str] = []
    pending = [source]
    while pending:
        path = pending.pop(0)
        with open(path, "rb") as f:
            text = f.read()
        for match in _LOCAL_INCLUDE.finditer(text):
            include = match.group(1).decode()
            for folder in (os.path.dirname(path), _SOURCE_DIR):
                candidate = os.path.join(folder, include)
                if os.path.isfile(candidate):
                    if candidate not in found:
                        found.append(candidate)
                        pending.append(candidate)
                    break
    return found


def library_path(name: str, flags: tuple[str, ...] = NATIVE_FLAGS, tag: str = "",
                 source_dir: str | None = None) -> str:
    """Path of the built, hash-verified library for kernel `name`, building it if needed.

    Args:
      name: the kernel source `NAME.cc` in `source_dir` (default: this folder).
      flags: compiler flags beyond the common ones (`NATIVE_FLAGS`: this CPU's full ISA).
      tag: a build name in the file name (letters, digits, `_`), e.g. the ISA and tiles.
      source_dir: the folder holding `NAME.cc` (kernels of other packages, e.g. models/); None:
        this folder.

    Raises:
      NativeKernelUnavailable: no compiler, a failed build, or a cache that is not private.
    """
    if tag and not tag.replace("_", "").isalnum():
        raise ValueError(f"build tag {tag!r} must be letters, digits and '_'")
    source = os.path.join(source_dir or _SOURCE_DIR, f"{name}.cc")
    with open(source, "rb") as f:
        text = f.read()
    cxx = compiler()
    if cxx is None:
        raise NativeKernelUnavailable(
            f"kernel {name!r} needs a C++17 compiler (set $CXX or install g++/clang++); none found"
        )
    headers = []
    for header in local_headers(source):
        with open(header, "rb") as f:
            headers.append(f.read())
    key = hashlib.sha256(
        b"\0".join([text, *headers, " ".join((*_FLAGS, *flags)).encode(), jaxlib.__version__.encode(),
                    _cpu_signature().encode(), cxx.encode()])
    ).hexdigest()[:16]
    out_dir = _private_cache_dir()
    target = os.path.join(out_dir, f"{name}-{tag}-{key}.so" if tag else f"{name}-{key}.so")
    if _verified(target):
        return target
    try:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)  # mode 0600
    except OSError as error:
        raise NativeKernelUnavailable(
            f"cannot write kernel {name!r} to {out_dir} ({error}); "
            "set $LONGCTX_JAX_CACHE to a writable directory"
        ) from error
    os.close(fd)
    cmd = [cxx, *_FLAGS, *flags, f"-I{_SOURCE_DIR}", f"-I{jax.ffi.include_dir()}", source, "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NativeKernelUnavailable(
                f"building kernel {name!r} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}"
            )
        os.chmod(tmp, 0o700)
        digest = file_sha256(tmp)
        os.replace(tmp, target)
        write_atomically(target + ".sha256", digest + "\n", mode=0o600)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _check_private(target, "kernel library")
    if file_sha256(target) != _recorded(target):  # another process's build landed in between
        raise NativeKernelUnavailable(f"kernel library {target} changed while it was being built; retry")
    return target


_FAILED: dict[tuple[str, str], NativeKernelUnavailable] = {}


@functools.cache
def _load(name: str, flags: tuple[str, ...], tag: str, source_dir: str | None) -> ctypes.CDLL:
    return ctypes.cdll.LoadLibrary(library_path(name, flags, tag, source_dir))


def load(name: str, flags: tuple[str, ...] = NATIVE_FLAGS, tag: str = "", source_dir: str | None = None
         ) -> ctypes.CDLL:
    """Builds (once) and loads kernel `name` with `flags`; see `library_path`.

    A failed build raises `NativeKernelUnavailable` and is remembered, so callers that probe
    for the kernel (dispatch's "auto") do not rerun the compiler.
    """
    if (name, tag) in _FAILED:
        raise _FAILED[(name, tag)]
    try:
        return _load(name, tuple(flags), tag, source_dir)
    except NativeKernelUnavailable as error:
        _FAILED[(name, tag)] = error
        raise


@functools.cache
def _register(name: str, symbol: str, flags: tuple[str, ...], tag: str, source_dir: str | None) -> str:
    library = load(name, flags, tag, source_dir)
    # One library may hold several handlers, so the symbol is part of the target name.
    target = (f"longctx_{name}_{tag}" if tag else f"longctx_{name}") + f"_{symbol}"
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return target


def register(name: str, symbol: str, flags: tuple[str, ...] = NATIVE_FLAGS, tag: str = "",
             source_dir: str | None = None) -> str:
    """Builds kernel `name`, registers its handler `symbol` as an FFI target on CPU.

    The target is `longctx_<name>_<symbol>` (`longctx_<name>_<tag>_<symbol>` for a tagged build). A failed
    build raises `NativeKernelUnavailable` (remembered, see `load`).
    """
    return _register(name, symbol, tuple(flags), tag, source_dir)
