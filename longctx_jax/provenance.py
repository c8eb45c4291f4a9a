"""Where a result came from: when it was measured and from which code (every results JSON).

`provenance()` gives the UTC time, the git commit of this checkout and whether tracked files
differed from it. The benchmarks (`bench/*.py`), the LongRoPE search (`search/longrope_run.py`)
and the passkey runs (`train/synthetic.py`) store it beside their numbers.
"""

import datetime
import os
import subprocess


def provenance() -> dict[str, object]:
    """{"measured_utc": ISO time now, "git_commit": HEAD of this checkout (or "unknown" outside
    git), "git_dirty": whether tracked files differ from it (None if git cannot say)}."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"measured_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git_commit": commit or "unknown", "git_dirty": bool(status) if status is not None else None}
