"""Appending records with direct I/O: from one reused aligned buffer to the disk, past the page cache.

Why.  A buffered write copies every byte into page-cache pages, and the
kernel must first find those pages.  On a VM that hands free memory back to
its host (virtio-balloon free page reporting), each fresh page costs a fault
in the host, charged to the guest as CPU time: 1.2-2.4 ms per MB measured
(tools/bench_write_cost.py), against 0.06 ms per MB for O_DIRECT from a
buffer that is reused.  Gradient capture writes tens of MB per step while
training keeps every core busy, so that CPU time is step time.

How.  The records of a run are copied, in file order, into a staging buffer
that is BLOCK-aligned and reused, and go out in whole blocks.  A run starts
where the segment ends, which is rarely on a block boundary: its first write
starts at the block holding the segment's end, with the bytes already on
disk before that end (the tail, kept in memory or read back) copied in
front.  It rewrites them unchanged.  The last block written is padded with
zeros, so while a segment is open its file may run up to BLOCK - 1 bytes past
its last record.  Those bytes are zeros, which no reader or scan takes for a
record (spec section 3), and ``trim`` cuts them when the segment is synced,
rolled over or closed.

Crash order.  The pieces of a run are written in file order, and the file is
never longer than what has been written.  So when a writer dies between two
pieces, a record whose header is on disk but whose payload is not yet has a
payload that runs past the end of the file, and recovery cuts it like any
torn tail (spec section 9).  No header has to wait for the checksums: they
are taken from the source buffers before anything is written.

Where a file system refuses O_DIRECT, at open or at the first write, the
writer goes on with buffered writes (``direct`` turns False).

For large runs: every run waits for the device and writes at least a block,
so a run of one small record costs several times a buffered write (113 us
of CPU against 29 for 1 KB, measured here).  Callers that write many small
records batch them into runs (capture's variants: variants.encode_held).
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

from . import format as fmt
from .segment import SegmentWriter

BLOCK = 4096            # file offsets, lengths and memory of direct writes are multiples of this
STAGE = 8 << 20         # the staging buffer: bytes per write
O_DIRECT = getattr(os, "O_DIRECT", 0)
_ZERO_BLOCK = bytes(BLOCK)


def _down(n: int) -> int:
    return n & ~(BLOCK - 1)


def _up(n: int) -> int:
    return (n + BLOCK - 1) & ~(BLOCK - 1)


class DirectSegmentWriter(SegmentWriter):
    """A SegmentWriter whose runs go to the disk with O_DIRECT (module docstring)."""

    def __init__(self, ns_dir: Path, stream: int, segment_size: int, fsync: bool,
                 stage: int | None = None):
        super().__init__(ns_dir, stream, segment_size, fsync)
        stage = STAGE if stage is None else stage
        if stage < BLOCK or stage % BLOCK:
            raise ValueError(f"the staging buffer must be a positive multiple of {BLOCK} bytes")
        self.direct = bool(O_DIRECT)
        self.stage_size = stage
        self._stage: mmap.mmap | None = None   # anonymous, so page-aligned; made at the first write
        self._tail: bytes | None = None        # segment bytes from _down(size) to size; None: unknown

    # -- the file ----------------------------------------------------------------

    def _open(self, path: Path, flags: int) -> int:
        if self.direct:
            try:
                return os.open(path, flags | O_DIRECT, 0o644)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False
                flags &= ~os.O_EXCL   # the file may exist already: the open failed after creating it
        return super()._open(path, flags)

    def _buffered(self, fd: int) -> None:
        """Write ``fd`` through the page cache, and every file from now on."""
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)
        self.direct = False

    def rollback(self, size: int) -> None:
        super().rollback(size)
        self._tail = None

    def _start(self, seq: int) -> None:
        super()._start(seq)
        self._tail = None

    def _write_header(self, fd: int, header: bytes) -> None:
        if not self.direct:
            return super()._write_header(fd, header)
        stage = self._staging()
        stage[:len(header)] = header
        stage[len(header):BLOCK] = _ZERO_BLOCK[len(header):]
        try:
            self._pwrite(fd, stage[:BLOCK], 0)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._buffered(fd)
            super()._write_header(fd, header)

    # -- writing a run -------------------------------------------------------------

    def _write_run(self, kind: int, items, offset: int, hlens: list[int], payloads: list, pads: list,
                   places: list[fmt.Place], checks: list[int] | None) -> list[int]:
        if not self.direct:
            return super()._write_run(kind, items, offset, hlens, payloads, pads, places, checks)
        checks = [fmt.xxh3(p) for p in payloads] if checks is None else checks[:len(items)]
        headers = self._headers(kind, items, checks, places)
        try:
            self._stream(offset, [b for hp in zip(headers, payloads, pads) for b in hp])
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # O_DIRECT taken at open but not for these writes: buffered from now on.
            self.rollback(offset)
            self._buffered(self.fd)
            return super()._write_run(kind, items, offset, hlens, payloads, pads, places, checks)
        return checks

    def _stream(self, offset: int, buffers: list) -> None:
        """Write ``buffers`` back to back at ``offset``, in whole staged blocks."""
        stage = self._staging()
        base = _down(offset)
        tail = self._tail_bytes(base, offset)
        fill = len(tail)
        stage[:fill] = tail
        pos = base
        for buf in buffers:
            view = memoryview(buf)
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            i, n = 0, len(view)
            while i < n:
                take = min(n - i, self.stage_size - fill)
                stage[fill:fill + take] = view[i:i + take]
                fill += take
                i += take
                if fill == self.stage_size:
                    self._pwrite(self.fd, stage, pos)
                    pos += fill
                    fill = 0
        if fill:
            last = _up(fill)
            stage[fill:last] = _ZERO_BLOCK[:last - fill]
            self._pwrite(self.fd, stage[:last], pos)
        self._tail = bytes(stage[_down(fill):fill])

    def _tail_bytes(self, base: int, offset: int) -> bytes:
        """The segment's bytes from ``base`` to ``offset``, which a write from ``base`` rewrites."""
        want = offset - base
        if self._tail is not None and len(self._tail) == want:
            return self._tail
        if want == 0:
            return b""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            got = os.pread(fd, want, base)
        finally:
            os.close(fd)
        return got.ljust(want, b"\0")  # past the end of the file: the hole a buffered write leaves

    def _staging(self) -> memoryview:
        if self._stage is None:
            self._stage = mmap.mmap(-1, self.stage_size)
        return memoryview(self._stage)

    @staticmethod
    def _pwrite(fd: int, view: memoryview, pos: int) -> None:
        while len(view):
            n = os.pwrite(fd, view, pos)
            view, pos = view[n:], pos + n

    def close(self) -> None:
        super().close()
        self._stage = None   # unmapped when the last view of it is gone
