"""Low-level file writes: whole writes of many buffers, disk space reserved
ahead of appends, fsync of files and directories."""
from __future__ import annotations

import ctypes
import os
import sys
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


# Linux fallocate(2) with FALLOC_FL_KEEP_SIZE allocates blocks past the end of
# a file without changing its size.  Appends into such blocks skip the file
# system's per-page block reservation: on ext4 they measured about 10% faster.
_FALLOC_FL_KEEP_SIZE = 1


def _load_fallocate():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate64
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


def reserve_space(fd: int, offset: int, length: int) -> bool:
    """Allocate disk space for bytes [offset, offset + length) of a file
    without changing its size.  False where the system or the file system
    cannot (or the disk is full): then writes allocate as they go."""
    if _fallocate is None or length <= 0:
        return False
    return _fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) == 0


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
