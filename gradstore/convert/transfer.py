"""Handing tensors from reader processes to the one writer without pickling them.

A worker checksums the tensors of a part and writes them once (pwrite) into
a file in a spool directory on tmpfs (/dev/shm), and sends back only a small
:class:`Batch` that says where each tensor sits and its checksum.  The
writer maps the file, stores the tensors straight from the map (the store
checksums what it writes, which must match) and deletes the file.  The spool directory
is named after the writer's pid, so a run killed with SIGKILL leaves nothing
that the next run does not sweep away.
"""
from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import dtypes
from ..format import align
from ..store import checksum
from .source import Item

_SPOOL_PREFIX = "gradstore-convert-"
_MIN_SHM_FREE = 1 << 30   # below this much free tmpfs, spool on the temp dir instead
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # one call maps a batch, not a fault per page


@dataclass(frozen=True)
class Ref:
    """One tensor of a batch: where it sits in the spool file, and its source checksum."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    checksum: int


@dataclass(frozen=True)
class Batch:
    """The tensors of one part, in a spool file (None when they hold no bytes)."""

    file: str | None
    refs: tuple[Ref, ...]

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.refs)


def _layout(items: list[Item]) -> tuple[list[int], int]:
    offsets, end = [], 0
    for it in items:
        offsets.append(end)
        end = align(end + it.nbytes)
    return offsets, end


def _view(buf, ref_dtype: str, shape: tuple[int, ...], offset: int) -> np.ndarray:
    dt = dtypes.to_numpy(ref_dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.empty(shape, dt)
    return np.frombuffer(buf, dt, count, offset).reshape(shape)


def pack(items: list[Item], spool: str) -> Batch:
    """Write ``items`` into a new spool file, each with the checksum of its source bytes.

    The bytes go in with pwrite, so this process maps nothing but the source:
    its memory grows by at most one part's worth of source pages.
    """
    offsets, size = _layout(items)
    if size == 0:
        return Batch(None, tuple(Ref(it.key, it.dtype, it.shape, 0, 0,
                                     checksum(_view(b"", it.dtype, it.shape, 0))) for it in items))
    path = os.path.join(spool, uuid.uuid4().hex)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        refs = []
        for it, off in zip(items, offsets, strict=True):
            arr = it.array()
            refs.append(Ref(it.key, it.dtype, it.shape, off, it.nbytes, checksum(arr)))
            _pwrite_all(fd, memoryview(arr.reshape(-1).view(np.uint8)), off)
            del arr
        os.ftruncate(fd, size)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return Batch(path, tuple(refs))


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


@contextmanager
def unpack(batch: Batch) -> Iterator[list[tuple[Ref, np.ndarray]]]:
    """Read-only views of a batch's tensors; the spool file is deleted afterwards."""
    if batch.file is None:
        yield [(r, _view(b"", r.dtype, r.shape, 0)) for r in batch.refs]
        return
    try:
        with open(batch.file, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
        try:
            yield [(r, _view(m, r.dtype, r.shape, r.offset)) for r in batch.refs]
        finally:
            try:
                m.close()
            except BufferError:  # a caller kept a view: the map goes when it does
                pass
    finally:
        discard(batch)


def discard(batch: Batch) -> None:
    if batch.file is not None:
        try:
            os.unlink(batch.file)
        except FileNotFoundError:
            pass


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
