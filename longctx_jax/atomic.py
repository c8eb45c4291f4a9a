"""Crash-safe file writes: the whole new content or the old file, never a mix.

`write_atomically(path, data)` writes a temporary file beside `path`, flushes it to disk
(fsync) and renames it over `path` (`os.replace`, atomic on POSIX). A process killed at any
point, or a write that fails (a full disk), leaves the previous file intact and removes the
temporary file when it can.
"""

import os


def write_atomically(path: str | os.PathLike, data: str | bytes, *, mode: int = 0o666) -> None:
    """Replaces the content of `path` with `data` atomically.

    Args:
      path: the file to write; its directory must exist.
      data: text (written as UTF-8) or bytes.
      mode: permission bits of a newly created file, before the umask (0o600: private).

    Raises:
      OSError: the write failed; `path` is unchanged.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        if os.path.lexists(tmp):  # left by a killed process that had the same pid
            os.remove(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
