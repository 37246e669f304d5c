"""Append-only segment files: writing with rollover, mapping for reads, scanning."""
from __future__ import annotations

import mmap
import os
import queue
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

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


# A run with at least this many payload bytes is hashed by a second thread
# while this one writes it (_write_hashing): xxhash and pwritev both release
# the GIL, so the hash costs little when a core is free.  Below this size the
# hand-off costs more than the hash.
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


# The hash thread runs ahead of the writer by at most HASH_AHEAD pieces of
# HASH_PIECE bytes: it reads a piece from memory, and pwritev then copies it
# out of the shared cache.  Each byte is read from memory once, as by a plain
# write, and the checksums are ready as soon as the last piece is written.
# (Hashing behind the writer measured 9% slower: the writer then waits for
# memory and, at the end of every run, for the hash of the last piece.)
# 1 MiB pieces, one ahead, measured best of 512 KiB-4 MiB and 0-2 ahead.
HASH_PIECE = 1 << 20
HASH_FIRST = 64 << 10
HASH_AHEAD = 1


def _pieces(hlens: list[int], payloads: list, pads: list):
    """The run in file order (header places, payloads, pads), cut into pieces:
    (buffers, [(payload index, view)] to hash, byte count).  The first
    piece is short (the writer hashes it while the hash thread wakes up),
    and each next one is twice the one before, up to HASH_PIECE bytes: the
    hash, faster than the write, stays a piece ahead."""
    bufs: list = []
    batch: list = []
    size, room = 0, min(HASH_FIRST, HASH_PIECE)
    for i, (hlen, payload, pad) in enumerate(zip(hlens, payloads, pads)):
        for buf, j in ((_zeros(hlen), -1), (payload, i), (pad, -1)):
            view = memoryview(buf).cast("B")
            while len(view):
                part, view = view[:room - size], view[room - size:]
                bufs.append(part)
                if j >= 0:
                    batch.append((j, part))
                size += len(part)
                if size == room:
                    yield bufs, batch, size
                    bufs, batch, size, room = [], [], 0, min(2 * room, HASH_PIECE)
    if bufs:
        yield bufs, batch, size


def _hash_ahead(pieces, states: list, written: queue.SimpleQueue, hashed: queue.SimpleQueue) -> None:
    """The hash thread: cut the next piece from ``pieces``, hash it into
    ``states`` once ``written`` allows it (True) and hand it to the writer
    through ``hashed``; None when all are handed over.  Stops early on False;
    hands over False if it fails."""
    try:
        for piece in pieces:
            if not written.get():
                break  # the writer failed
            for i, view in piece[1]:
                states[i].update(view)
            hashed.put(piece)
        hashed.put(None)
    except BaseException:
        hashed.put(False)  # the writer must not wait for a piece that never comes
        raise


def _write_hashing(fd: int, offset: int, hlens: list[int], payloads: list, pads: list) -> list[int]:
    """Write a run with zeroed headers; return its payloads' checksums.

    The first piece is cut and hashed here, while the hash thread wakes up;
    the thread cuts and hashes the others, so the writer only writes.  Piece
    k is written once it is hashed, and piece k + 1 + HASH_AHEAD is hashed
    once piece k is written.
    """
    pieces = _pieces(hlens, payloads, pads)
    states = [xxhash.xxh3_64() for _ in payloads]
    piece = next(pieces)
    for i, view in piece[1]:
        states[i].update(view)
    written: queue.SimpleQueue = queue.SimpleQueue()
    hashed: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(HASH_AHEAD):
        written.put(True)
    hashing = _hasher().submit(_hash_ahead, pieces, states, written, hashed)
    try:
        while piece:  # None: all written; False: the hash thread failed, result() raises
            bufs, _, size = piece
            pwrite_views(fd, bufs, size, offset)
            offset += size
            written.put(True)
            piece = hashed.get()
    finally:
        written.put(False)  # stop the thread if it still waits to hash a piece
        hashing.result()  # never return while the thread reads a payload
    return [s.intdigest() for s in states]


_ZEROS = bytes(4096)


def _zeros(n: int):
    """n zero bytes: padding, or a header's place until it is written."""
    return memoryview(_ZEROS)[:n] if n <= len(_ZEROS) else bytes(n)


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

    def append_run(self, kind: int, items: list[tuple[bytes, object]]) -> list[tuple[int, int, int, int]]:
        """Write the leading records of ``items`` ((packed meta, payload) pairs)
        that fit in one segment, at least one; return (seq, record offset,
        header length, payload checksum) for each record written.

        All or nothing: a failure cuts the segment back.  A small run is
        hashed, then written with one pwritev.  A large one is written with
        zeroed headers, in pieces that another thread hashes just ahead of
        the writer, and the headers are filled in once the checksums are known;
        until then those bytes are no record, so a crash in between leaves a
        torn tail that recovery drops.
        """
        hlens = [fmt.record_header_len(mb) for mb, _ in items]
        totals = [fmt.align(h + len(p)) for h, (_, p) in zip(hlens, items)]
        offset = self._reserve(totals[0])
        end, k = offset + totals[0], 1
        while k < len(items) and end + totals[k] <= self.segment_size:
            end += totals[k]
            k += 1
        payloads = [p for _, p in items[:k]]
        pads = [_zeros(t - h - len(p)) for t, h, p in zip(totals, hlens, payloads)]
        try:
            if sum(len(p) for p in payloads) >= PARALLEL_HASH:
                checks = _write_hashing(self.fd, offset, hlens, payloads, pads)
                headers = self._headers(kind, items, checks)
                pos = offset
                for header, total in zip(headers, totals):
                    pwrite_views(self.fd, [memoryview(header)], len(header), pos)
                    pos += total
            else:
                checks = [fmt.xxh3(p) for p in payloads]
                headers = self._headers(kind, items, checks)
                pwrite_views(self.fd, [b for hp in zip(headers, payloads, pads) for b in hp], end - offset, offset)
        except BaseException:
            # A failed write (disk full, signal) must not leave half a record.
            self.rollback(offset)
            raise
        self._commit(offset, end - offset)
        out, pos = [], offset
        for h, total, check in zip(hlens, totals, checks):
            out.append((self.seq, pos, h, check))
            pos += total
        return out

    @staticmethod
    def _headers(kind: int, items, checks: list[int]) -> list[bytes]:
        return [fmt.record_header(kind, mb, len(p), c) for (mb, p), c in zip(items, checks)]

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
