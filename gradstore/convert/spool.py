"""The writer's spool directory: where readers leave the tensors they copy out.

It lives on tmpfs (/dev/shm) when there is room, and is named after the
writer's pid, so a run killed with SIGKILL leaves nothing that the next run
does not sweep away.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_SPOOL_PREFIX = "gradstore-convert-"
_MIN_SHM_FREE = 1 << 30   # below this much free tmpfs, spool on the temp dir instead


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Spool:
    """The writer's spool directory for the batches in flight."""

    def __init__(self) -> None:
        shm, tmp = Path("/dev/shm"), Path(tempfile.gettempdir())
        base = shm
        if not (shm.is_dir() and os.access(shm, os.W_OK) and _free(shm) >= _MIN_SHM_FREE):
            base = tmp
        for b in {shm, tmp}:
            sweep_stale(b)
        self.path = Path(tempfile.mkdtemp(prefix=f"{_SPOOL_PREFIX}{os.getpid()}-", dir=base))

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def sweep_stale(base: Path) -> None:
    """Remove spool directories left by converters that died (their pid is gone)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(_SPOOL_PREFIX):
            continue
        pid = name[len(_SPOOL_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(base / name, ignore_errors=True)
