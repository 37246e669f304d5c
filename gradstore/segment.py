"""Append-only segment files: writing with rollover, mapping for reads, scanning."""
from __future__ import annotations

import mmap
import os
import re
import time
from itertools import accumulate
from pathlib import Path

from . import format as fmt
from . import hashrun
from .errors import FormatError
from .fileio import FileHandle, fsync_dir, pwrite_views, write_all

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
        self.fd = self._open(self.dir / segment_name(self.stream, seq), os.O_RDWR)
        self.seq = seq
        self.rollback(size)

    def rollback(self, size: int) -> None:
        """Cut the segment back to ``size`` bytes and append from there."""
        os.ftruncate(self.fd, size)
        self.size = size

    def _open(self, path: Path, flags: int) -> int:
        return os.open(path, flags, 0o644)

    def _write_header(self, fd: int, header: bytes) -> None:
        write_all(fd, [header], 0)

    def _start(self, seq: int) -> None:
        path = self.dir / segment_name(self.stream, seq)
        fd = self._open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            self._write_header(fd, fmt.pack_segment_header(self.stream, seq, time.time_ns()))
            if self.fsync:
                os.fsync(fd)
                fsync_dir(self.dir)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        if self.fd is not None:
            self.trim()
            if self.fsync or self.dirty:
                os.fsync(self.fd)
            os.close(self.fd)
        self.fd, self.seq, self.size = fd, seq, fmt.SEG_HEADER_SIZE
        self.dirty = False

    def trim(self) -> None:
        """Cut the file right after its last record: direct writes pad it to a
        whole block, which is no record but no use either once writing stops."""
        if self.fd is not None and os.fstat(self.fd).st_size > self.size:
            os.ftruncate(self.fd, self.size)

    def sync(self) -> None:
        self.trim()
        super().sync()

    def close(self) -> None:
        try:
            self.trim()
        finally:
            super().close()

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

    def append_run(self, kind: int, items: list[tuple[bytes, object]], n: int, run_index: int,
                   run_len: int, checks: list[int] | None = None) -> list[tuple[int, int, int, int]]:
        """Write the leading records of ``items`` ((packed meta, payload) pairs)
        that fit in one segment, at least one; return (seq, record offset,
        header length, payload checksum) for each record written.

        The records are numbered from ``n`` and are ``run_index``.. of a run
        of ``run_len`` (spec section 4).  ``checks`` gives payload checksums
        known already (compaction copies keep theirs, damage included);
        otherwise the payloads are hashed here.

        All or nothing: a failure cuts the segment back.  A small run is
        hashed, then written with one pwritev.  A large one is written with
        zeroed headers, in pieces that another thread hashes just ahead of
        the writer, and the headers are filled in once the checksums are known;
        until then those bytes are no record, so a crash in between leaves a
        torn tail that recovery drops.  (gradstore.direct writes them past
        the page cache instead.)
        """
        hlens = [fmt.record_header_len(mb) for mb, _ in items]
        totals = [fmt.align(h + len(p)) for h, (_, p) in zip(hlens, items)]
        offset = self._reserve(totals[0])
        end, k = offset + totals[0], 1
        while k < len(items) and end + totals[k] <= self.segment_size:
            end += totals[k]
            k += 1
        payloads = [p for _, p in items[:k]]
        pads = [hashrun.zeros(t - h - len(p)) for t, h, p in zip(totals, hlens, payloads)]
        starts = list(accumulate(totals[:k - 1], initial=offset))  # of each record
        places = [fmt.Place(n + i, self.seq, pos, run_index + i, run_len) for i, pos in enumerate(starts)]
        try:
            checks = self._write_run(kind, items[:k], offset, hlens[:k], payloads, pads, places, checks)
        except BaseException:
            # A failed write (disk full, signal) must not leave half a record.
            self.rollback(offset)
            raise
        self._commit(offset, end - offset)
        return [(self.seq, pos, h, check) for pos, h, check in zip(starts, hlens, checks)]

    def _write_run(self, kind: int, items, offset: int, hlens: list[int], payloads: list, pads: list,
                   places: list[fmt.Place], checks: list[int] | None) -> list[int]:
        """Write the records laid out by append_run at ``offset``; their payload checksums."""
        end = offset + sum(h + len(p) + len(z) for h, p, z in zip(hlens, payloads, pads))
        if checks is None and sum(len(p) for p in payloads) >= hashrun.PARALLEL_HASH:
            checks = hashrun.write_hashed(self.fd, offset, hlens, payloads, pads)
            for header, place in zip(self._headers(kind, items, checks, places), places):
                pwrite_views(self.fd, [header], len(header), place.offset)
            return checks
        checks = [fmt.xxh3(p) for p in payloads] if checks is None else checks[:len(items)]
        headers = self._headers(kind, items, checks, places)
        pwrite_views(self.fd, [b for hp in zip(headers, payloads, pads) for b in hp], end - offset, offset)
        return checks

    @staticmethod
    def _headers(kind: int, items, checks: list[int], places: list[fmt.Place]) -> list[bytes]:
        return [fmt.record_header(kind, mb, len(p), c, place)
                for (mb, p), c, place in zip(items, checks, places)]

    @property
    def path(self) -> Path:
        return self.dir / segment_name(self.stream, self.seq)

    def position(self) -> tuple[int, int | None]:
        """(seq, size) of the segment being appended to, where a run starts;
        size None when no segment is open (the next append starts seq + 1)."""
        return self.seq, (self.size if self.fd is not None else None)

    def rollback_to(self, seq: int, size: int | None) -> None:
        """Undo appends since ``position()`` returned (seq, size), segments
        started since included: a failed write call leaves nothing behind."""
        if self.seq == seq:
            if self.fd is not None and size is not None:
                self.rollback(size)
            return
        self.close()
        for later in range(seq + 1, self.seq + 1):
            (self.dir / segment_name(self.stream, later)).unlink(missing_ok=True)
        if size is not None:
            self.resume(seq, size)
        else:
            self.seq = seq


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


def scan(path: Path, start: int = fmt.SEG_HEADER_SIZE, stop: int | None = None,
         bad: list[tuple[int, str]] | None = None) -> list[tuple[int, fmt.RecordHeader]]:
    """Valid records of a segment in offset order, from ``start``, skipping damaged ones.

    After an invalid record the scan resynchronises on the next 64-aligned
    record magic whose header checksum holds, so one damaged header does not
    hide the records behind it.  A version-2 record must name the segment and
    offset it is found at: a record inside another one's payload (a segment
    stored as a tensor) names where it was first written, so it is never
    taken for a record of this file.  Returns the records as (offset,
    header).  A damaged segment header is not fatal: records check
    themselves.

    ``stop``: scan no record that starts at or past it.  ``bad`` collects
    (offset, reason) of what should be a record and is not: where a record
    ends and neither another one nor zeros follow, and every record magic
    the resync passes over that does not start a valid record.
    """
    where = f"{path.parent.name}/{path.name}"
    records: list[tuple[int, fmt.RecordHeader]] = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < fmt.SEG_HEADER_SIZE:
            raise FormatError(f"{where}: truncated segment header ({size} of 64 bytes)")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    seq = int(_SEG_RE.fullmatch(path.name).group(2))
    stop = size if stop is None else min(stop, size)
    pos = start
    try:
        while pos < stop:
            rec = _record_at(buf, pos, size, where, seq)
            if not isinstance(rec, str):
                records.append((pos, rec))
                pos = pos + rec.total
                continue
            ends_last = pos == (records[-1][0] + records[-1][1].total if records else start)
            if bad is not None and (buf[pos:pos + 4] == fmt.REC_MAGIC or ends_last) \
                    and buf[pos:pos + fmt.ALIGN].count(0) < min(fmt.ALIGN, size - pos):
                bad.append((pos, rec))
            pos = buf.find(fmt.REC_MAGIC, pos + fmt.ALIGN, stop)
            while pos != -1 and pos % fmt.ALIGN:
                pos = buf.find(fmt.REC_MAGIC, pos + 1, stop)
            if pos == -1:
                break
        return records
    finally:
        buf.close()


def _record_at(buf, pos: int, size: int, where: str, seq: int) -> fmt.RecordHeader | str:
    """The valid record at ``pos``, or why there is none."""
    try:
        rec = fmt.unpack_record_header(buf, pos, where)
    except FormatError as exc:
        return str(exc).split(": ", 1)[-1]
    if rec.version >= 2 and (rec.seg != seq or rec.at != pos):
        return "a record written elsewhere (inside another record's payload?)"
    if pos + rec.header_len + rec.payload_len > size:
        return f"payload runs past the end of the file ({size} bytes)"
    return rec
