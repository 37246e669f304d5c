"""Low-level file writes: whole writes of many buffers, fsync of files and directories."""
from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


try:
    _IOV_MAX = os.sysconf("SC_IOV_MAX")
except (AttributeError, ValueError, OSError):
    _IOV_MAX = 1024
if _IOV_MAX <= 0:
    _IOV_MAX = 1024


def write_all(fd: int, buffers: list, offset: int | None = None) -> None:
    """Write every buffer, looping because the kernel may write less per call.

    With ``offset`` the write is positional (pwritev) and the file position is
    left alone; without, it appends at the file position (writev).  Any
    number of buffers: a call takes at most IOV_MAX of them.
    """
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    while views:
        batch = views[:_IOV_MAX]
        if offset is None:
            n = os.writev(fd, batch)
        else:
            n = os.pwritev(fd, batch, offset)
            offset += n
        _advance(views, n)


def _advance(views: list, n: int) -> None:
    """Drop the first ``n`` bytes of a list of byte views: what a write took."""
    done = 0
    while done < len(views) and n >= len(views[done]):
        n -= len(views[done])
        done += 1
    del views[:done]
    if views and n:
        views[0] = views[0][n:]


def pwrite_views(fd: int, views: list, size: int, offset: int) -> None:
    """write_all for ``size`` bytes of bytes objects and 1-d byte memoryviews,
    positional: one pwritev in the usual case, with nothing to convert."""
    n = os.pwritev(fd, views, offset) if len(views) <= _IOV_MAX else 0
    if n < size:
        views = list(views)
        _advance(views, n)
        write_all(fd, views, offset + n)


class FileHandle:
    """An open file descriptor; for writers, whether it needs an fsync."""

    fd: int | None = None
    dirty = False

    def sync(self) -> None:
        if self.fd is not None and self.dirty:
            os.fsync(self.fd)
            self.dirty = False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
