"""Append-only segment files: writing with rollover, mapping for reads, scanning."""
from __future__ import annotations

import mmap
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import format as fmt
from .errors import FormatError

_SEG_RE = re.compile(r"(data|var)-([0-9]{6,})\.bin")
_STREAM_BY_NAME = {v: k for k, v in fmt.STREAM_NAMES.items()}


def segment_name(stream: int, seq: int) -> str:
    return f"{fmt.STREAM_NAMES[stream]}-{seq:06d}.bin"


def list_segments(ns_dir: Path, stream: int) -> list[int]:
    """Sequence numbers of a stream's segments, ascending."""
    out = []
    for name in os.listdir(ns_dir):
        m = _SEG_RE.fullmatch(name)
        if m and _STREAM_BY_NAME[m.group(1)] == stream:
            out.append(int(m.group(2)))
    return sorted(out)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, buffers: list, offset: int | None = None) -> None:
    """Write every buffer, looping because the kernel may write less per call.

    With ``offset`` the write is positional (pwritev) and the file position is
    left alone; without, it appends at the file position (writev).
    """
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    while views:
        if offset is None:
            n = os.writev(fd, views)
        else:
            n = os.pwritev(fd, views, offset)
            offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


# A large payload is hashed by a second thread while this one writes it: xxhash
# and pwritev both release the GIL, so the hash costs no time when a core is
# free.  Below this size the hand-off costs more than the hash.
PARALLEL_HASH = 1 << 20
_hash_pool: ThreadPoolExecutor | None = None


def _hasher() -> ThreadPoolExecutor:
    global _hash_pool
    if _hash_pool is None:
        _hash_pool = ThreadPoolExecutor(1, thread_name_prefix="gradstore-hash")
    return _hash_pool


def _forget_hasher() -> None:
    """A forked child has no copy of the thread: it must start its own."""
    global _hash_pool
    _hash_pool = None


os.register_at_fork(after_in_child=_forget_hasher)


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


class SegmentWriter(FileHandle):
    """Appends records to the newest segment of one stream, rolling over by size."""

    def __init__(self, ns_dir: Path, stream: int, segment_size: int, fsync: bool):
        self.dir = ns_dir
        self.stream = stream
        self.segment_size = segment_size
        self.fsync = fsync
        self.fd: int | None = None
        self.seq = -1
        self.size = 0
        self.dirty = False

    def resume(self, seq: int, size: int) -> None:
        """Continue appending to segment ``seq`` whose valid bytes end at ``size``."""
        self.close()
        self.fd = os.open(self.dir / segment_name(self.stream, seq), os.O_RDWR)
        self.seq = seq
        self.rollback(size)

    def rollback(self, size: int) -> None:
        """Cut the segment back to ``size`` bytes and append from there."""
        os.ftruncate(self.fd, size)
        self.size = size

    def _start(self, seq: int) -> None:
        path = self.dir / segment_name(self.stream, seq)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, [fmt.pack_segment_header(self.stream, seq, time.time_ns())], 0)
            if self.fsync:
                os.fsync(fd)
                fsync_dir(self.dir)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        if self.fd is not None:
            if self.fsync or self.dirty:
                os.fsync(self.fd)
            os.close(self.fd)
        self.fd, self.seq, self.size = fd, seq, fmt.SEG_HEADER_SIZE
        self.dirty = False

    def _reserve(self, total: int) -> int:
        """Offset for a record of ``total`` bytes, rolling over to a new segment if due."""
        if self.fd is None:
            self._start(self.seq + 1)
        elif self.size > fmt.SEG_HEADER_SIZE and self.size + total > self.segment_size:
            self._start(self.seq + 1)
        return self.size

    def _commit(self, offset: int, total: int) -> None:
        self.size = offset + total
        self.dirty = True
        if self.fsync:
            os.fsync(self.fd)

    def append(self, kind: int, meta: dict, payload) -> tuple[int, int, int, int]:
        """Write one record; return (seq, record offset, header length, payload checksum).

        All or nothing: a failure cuts the segment back. A large payload is
        written before its header, while another thread hashes it; until the
        header lands those bytes are no record, so a crash in between leaves
        a torn tail that recovery drops.
        """
        plen = len(payload)
        hlen = len(fmt.pack_record_header(kind, meta, plen, 0))
        total = fmt.align(hlen + plen)
        pad = bytes(total - hlen - plen)
        offset = self._reserve(total)
        try:
            if plen >= PARALLEL_HASH:
                hashed = _hasher().submit(fmt.xxh3, payload)
                try:
                    write_all(self.fd, [payload, pad], offset + hlen)
                finally:
                    checksum = hashed.result()  # never leave the thread reading the payload
                write_all(self.fd, [fmt.pack_record_header(kind, meta, plen, checksum)], offset)
            else:
                checksum = fmt.xxh3(payload)
                header = fmt.pack_record_header(kind, meta, plen, checksum)
                write_all(self.fd, [header, payload, pad], offset)
        except BaseException:
            # A failed write (disk full, signal) must not leave half a record.
            self.rollback(offset)
            raise
        self._commit(offset, total)
        return self.seq, offset, hlen, checksum

    def append_raw(self, record) -> tuple[int, int]:
        """Copy a whole record (header, payload and padding) as it is: compaction."""
        total = len(record)
        offset = self._reserve(total)
        try:
            write_all(self.fd, [record], offset)
        except BaseException:
            self.rollback(offset)
            raise
        self._commit(offset, total)
        return self.seq, offset


class SegmentMaps:
    """Read-only memory maps of segments, remapped when a segment has grown."""

    def __init__(self, ns_dir: Path):
        self.dir = ns_dir
        self._maps: dict[tuple[int, int], mmap.mmap] = {}

    def get(self, stream: int, seq: int, end: int) -> mmap.mmap:
        """A map of segment (stream, seq) that covers at least ``end`` bytes."""
        m = self._maps.get((stream, seq))
        if m is not None and len(m) >= end:
            return m
        path = self.dir / segment_name(stream, seq)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < end:
                raise FormatError(f"{path.parent.name}/{path.name}: truncated, {size} bytes "
                                  f"but the index needs {end}")
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        # Views already handed out keep the old map alive; we only drop our reference.
        self._maps[(stream, seq)] = m
        return m

    def forget(self) -> None:
        self._maps.clear()


def scan(path: Path) -> tuple[list[tuple[int, fmt.RecordHeader]], int]:
    """Valid records of a segment in offset order, skipping damaged ones.

    After an invalid record the scan resynchronises on the next 64-aligned
    record magic whose header checksum holds, so one damaged header does not
    hide the records behind it. Returns the records as (offset, header) and
    the offset where the last valid record ends, so callers can cut a torn
    tail. A damaged segment header is not fatal: records check themselves.
    """
    where = f"{path.parent.name}/{path.name}"
    records: list[tuple[int, fmt.RecordHeader]] = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < fmt.SEG_HEADER_SIZE:
            raise FormatError(f"{where}: truncated segment header ({size} of 64 bytes)")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    pos = end = fmt.SEG_HEADER_SIZE
    try:
        while pos < size:
            rec = _record_at(buf, pos, size, where)
            if rec is not None:
                records.append((pos, rec))
                pos = end = pos + rec.total
                continue
            pos = buf.find(fmt.REC_MAGIC, pos + fmt.ALIGN)
            while pos != -1 and pos % fmt.ALIGN:
                pos = buf.find(fmt.REC_MAGIC, pos + 1)
            if pos == -1:
                break
        return records, min(end, size)
    finally:
        buf.close()


def _record_at(buf, pos: int, size: int, where: str):
    try:
        rec = fmt.unpack_record_header(buf, pos, where)
    except FormatError:
        return None
    start = pos + rec.header_len
    if start + rec.payload_len > size:
        return None
    return rec
