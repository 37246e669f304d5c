"""Handing tensors from reader processes to the one writer without pickling them.

A reader sends back only a small :class:`Batch` that says where each tensor
of a part sits and the checksum of its bytes, in one of two places:

* in the source file itself, when the format says the tensor's bytes sit
  there whole and uncompressed (``Item.offset``) and the reader has checked
  that they do.  The writer reads them from there with pread, straight from
  the page cache: no spool file in between.
* otherwise in a spool file (see spool.py): the reader writes the tensor
  there once (pwrite); the writer maps the file and deletes it afterwards.

The store checksums what it writes, which must equal the reader's checksum.
A source file can change between the read and the write (a producer
rewrites or truncates it): the writer compares the file's stat with the
reader's before and after its read, and hashes each tensor again just
before storing it, so such a change is reported and not stored.  The writer
reads sources with pread and never maps them: a mapped file truncated by
another process kills whoever touches the lost pages with SIGBUS, which
Python cannot catch; a pread comes back short instead.  (Spool files are the
converter's own, so mapping them is safe.)  Readers do map sources (torch.load
with mmap, safetensors, the checksums below): a reader killed that way fails
only the file that changed under it (see pipeline), but with ``jobs=0`` the
reading happens in the writer's process, which is then not protected.
"""
from __future__ import annotations

import mmap
import os
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .. import dtypes
from ..format import align
from ..store import checksum
from .source import Item, SourceError, edges_of, one_line

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # one call maps a batch, not a fault per page
_EDGE = 1024   # values compared at each end of a tensor found at a file offset

Stat = tuple[int, int, int, int]  # device, inode, size, mtime_ns


def stat_of(file: str | int) -> Stat:
    """What identifies a version of a file (a path, or an open descriptor)."""
    st = os.stat(file)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Ref:
    """One tensor of a batch: where it sits, and the checksum of its source bytes.

    ``offset`` is in the source file when ``in_source``, else in the spool file.
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    checksum: int
    in_source: bool = False


@dataclass(frozen=True)
class Batch:
    """The tensors of one part: some in a spool file (None when it holds no bytes),
    some in the source file, which was ``stat`` when the reader read it."""

    file: str | None
    refs: tuple[Ref, ...]
    source: str | None = None
    stat: Stat | None = None

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.refs)


def _view(buf, ref_dtype: str, shape: tuple[int, ...], offset: int) -> np.ndarray:
    dt = dtypes.to_numpy(ref_dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.empty(shape, dt)
    return np.frombuffer(buf, dt, count, offset).reshape(shape)


class FileMap:
    """A read-only map of bytes ``[lo, hi)`` of an open file, viewed by file offset."""

    def __init__(self, fd: int, lo: int, hi: int, needed: int | None = None):
        self.start = lo - lo % mmap.ALLOCATIONGRANULARITY
        # Fault the pages in with one call, unless the range is mostly not ours.
        populate = _POPULATE if needed is None or hi - self.start <= 2 * needed else 0
        self.map = mmap.mmap(fd, hi - self.start, flags=mmap.MAP_SHARED | populate,
                             prot=mmap.PROT_READ, offset=self.start)

    def view(self, ref_dtype: str, shape: tuple[int, ...], offset: int) -> np.ndarray:
        return _view(self.map, ref_dtype, shape, offset - self.start)

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a caller kept a view: the map goes when it does
            pass


# -- the reader's side -----------------------------------------------------------

def pack(items: list[Item], spool: str, source: str | None = None,
         stat: Stat | None = None) -> Batch:
    """Checksum ``items``: those found in ``source`` stay there, the others go to a spool file.

    ``stat`` is the source's stat from before it was read.  Memory grows by
    at most one part's worth of source pages: the spool file is written with
    pwrite, and the source is mapped, not copied.
    """
    found = _in_source(items, source) if source is not None else {}
    rest = [it for i, it in enumerate(items) if i not in found]
    file, spooled = _spool(rest, spool)
    spooled_refs = iter(spooled)
    refs = tuple(found[i] if i in found else next(spooled_refs) for i in range(len(items)))
    if not found:
        return Batch(file, refs)
    return Batch(file, refs, source, stat)


def _in_source(items: list[Item], path: str) -> dict[int, Ref]:
    """{index: ref} of the items whose bytes are checked to sit at their offset in ``path``."""
    want = [i for i, it in enumerate(items) if it.offset is not None and it.nbytes]
    if not want:
        return {}
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return {}
    try:
        size = os.fstat(fd).st_size
        want = [i for i in want if 0 <= items[i].offset <= size - items[i].nbytes]
        if not want:
            return {}
        lo = min(items[i].offset for i in want)
        hi = max(items[i].offset + items[i].nbytes for i in want)
        m = FileMap(fd, lo, hi, sum(items[i].nbytes for i in want))
    finally:
        os.close(fd)
    found = {}
    try:
        for i in want:
            it = items[i]
            view = m.view(it.dtype, it.shape, it.offset)
            if it.edges is None or _same_edges(it, view):
                found[i] = Ref(it.key, it.dtype, it.shape, it.offset, it.nbytes, checksum(view), True)
            del view
    finally:
        m.close()
    return found


def _same_edges(item: Item, view: np.ndarray) -> bool:
    """True when the first and last values the format reads are the bytes at the offset."""
    try:
        expected = item.edges(_EDGE)
    except Exception:  # a library that cannot slice this dataset: copy it out instead
        return False
    return all(a.tobytes() == b.tobytes() for a, b in zip(expected, edges_of(view, _EDGE), strict=True))


def _spool(items: list[Item], spool: str) -> tuple[str | None, list[Ref]]:
    """Write ``items`` into a new spool file, each with the checksum of its source bytes."""
    offsets, size = [], 0
    for it in items:
        offsets.append(size)
        size = align(size + it.nbytes)
    if size == 0:
        return None, [Ref(it.key, it.dtype, it.shape, 0, 0,
                          checksum(_view(b"", it.dtype, it.shape, 0))) for it in items]
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
    return path, refs


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


# -- the writer's side -----------------------------------------------------------

@contextmanager
def unpack(batch: Batch) -> Iterator[list[tuple[Ref, np.ndarray]]]:
    """Read-only views of a batch's tensors; the spool file is deleted afterwards.

    SourceError when the source file is not the version the reader read.
    """
    with ExitStack() as stack:
        stack.callback(discard, batch)
        spooled = None
        if batch.file is not None:
            with open(batch.file, "rb") as f:
                spooled = FileMap(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            stack.callback(spooled.close)
        copies = _read_source(batch) if batch.source is not None else {}
        yield [(r, copies[i] if r.in_source else spooled.view(r.dtype, r.shape, r.offset)
                if r.nbytes else _view(b"", r.dtype, r.shape, 0)) for i, r in enumerate(batch.refs)]


class _Scratch:
    """The writer's buffer for source bytes, kept from batch to batch: fresh memory for
    every batch would cost a page fault (and a page of zeroes) per 4 KiB."""

    def __init__(self) -> None:
        self.buf = np.empty(0, np.uint8)

    def get(self, nbytes: int) -> np.ndarray:
        if self.buf.size < nbytes:
            self.buf = np.empty(0, np.uint8)   # let the old one go first
            self.buf = np.empty(nbytes, np.uint8)
        return self.buf


_scratch = _Scratch()


def _read_source(batch: Batch) -> dict[int, np.ndarray]:
    """{index: array} of the batch's tensors that sit in its source, read with pread.

    The file must be the version the reader read, before and after: a file
    truncated or rewritten meanwhile is a SourceError, never a SIGBUS.  The
    arrays share one buffer that the next batch reuses: they are valid until then.
    """
    path = batch.source
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise SourceError(f"{path}: cannot open it again to store it: {one_line(exc)}") from None
    try:
        if stat_of(fd) != batch.stat:
            raise SourceError(f"{path}: changed after it was read (its size or modification "
                              "time differ); not stored")
        wanted = [(i, r) for i, r in enumerate(batch.refs) if r.in_source and r.nbytes]
        starts, size = [], 0
        for _, r in wanted:
            starts.append(size)
            size = align(size + r.nbytes)
        buf = _scratch.get(size)
        out = {}
        for (i, r), start in zip(wanted, starts, strict=True):
            _pread_all(fd, memoryview(buf[start:start + r.nbytes]), r.offset, path, r.key)
            out[i] = _view(buf, r.dtype, r.shape, start)
        if stat_of(fd) != batch.stat:
            raise SourceError(f"{path}: changed while it was being stored (its size or "
                              "modification time differ); not stored")
        return out
    except OSError as exc:
        raise SourceError(f"{path}: cannot read it again to store it: {one_line(exc)}") from None
    finally:
        os.close(fd)


def _pread_all(fd: int, buf: memoryview, offset: int, path: str, key: str) -> None:
    """Fill ``buf`` from ``offset``; SourceError if the file ends first (it was truncated)."""
    start, done = offset, 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], start + done)
        if n == 0:
            raise SourceError(f"{path}: truncated while it was being converted ({key}: "
                              f"{len(buf)} bytes at offset {start}, the file ends at "
                              f"{start + done}); not stored")
        done += n


def discard(batch: Batch) -> None:
    if batch.file is not None:
        try:
            os.unlink(batch.file)
        except FileNotFoundError:
            pass
