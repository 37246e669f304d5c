"""One namespace of a store: its segments, index log, snapshot and lock.

A namespace has one writer at a time (the lock) and any number of readers.
Recovery, rebuild and compaction live here because each is a statement about
how segments and the index agree (spec/FORMAT.md section 9).
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from . import format as fmt
from . import recovery
from .direct import DirectSegmentWriter
from .errors import FormatError, LockedError, WriteError
from .index import Entry, Index
from .log import (LogFollower, LogWriter, SNAPSHOT, create_log, list_logs, log_name,
                  read_snapshot, write_snapshot)
from .fileio import fsync_dir
from .segment import SegmentMaps, SegmentWriter, list_segments, segment_name

STREAMS = (fmt.STREAM_DATA, fmt.STREAM_VAR)
CHECKPOINT_EVERY = 65536   # log entries between automatic snapshots (at least)
CHECKPOINT_ON_CLOSE = 1024  # a close snapshots if the log holds at least this many
COMPACT_BATCH = 256         # records compaction copies per run


@dataclass
class Problem:
    """A damaged record or file found by verify()."""

    key: str
    segment: str
    offset: int
    message: str

    def __str__(self) -> str:
        return f"{self.segment} @ {self.offset}: {self.key}: {self.message}"


def _lock_holder(fd: int) -> str:
    """Who holds the lock, as the holder wrote it: it writes right after taking
    the lock, so a contender may look in between and wait a moment."""
    for _attempt in range(50):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text
        time.sleep(0.002)
    return "a writer that has not said who it is yet"


class Namespace:
    def __init__(self, store_dir: Path, name: str):
        self.dir = store_dir / name
        self.name = name
        self.index = Index(name)
        self.maps = SegmentMaps(self.dir)
        self.follower: LogFollower | None = None
        self.lock_fd: int | None = None
        self.writers: dict[int, SegmentWriter] = {}
        self.log: LogWriter | None = None
        self.lost: list[Entry] = []   # set by rebuild()
        self.direct = False           # the segment writers use direct I/O (gradstore.direct)

    @property
    def writable(self) -> bool:
        return self.log is not None

    def has_segments(self) -> bool:
        return any(list_segments(self.dir, s) for s in STREAMS)

    # -- loading ---------------------------------------------------------------

    def _load(self) -> tuple[Index, LogFollower] | None:
        """Index from the snapshot and logs; None when they are missing or damaged.

        Without a snapshot only an empty namespace may be loaded from logs
        alone: every namespace gets a snapshot when it is created, so segments
        without one mean the index was lost or a rebuild was cut short.
        """
        for _attempt in range(5):
            snap = None
            try:
                snap = read_snapshot(self.dir)
                if snap is None:
                    logs = list_logs(self.dir)
                    if not logs or logs[0] != 0 or self.has_segments():
                        return None
                    index, gen, offset = Index(self.name), 0, fmt.LOG_HEADER_SIZE
                else:
                    index = Index.from_snapshot(snap, self.name)
                    gen, offset = snap["log"], snap["log_offset"]
                follower = LogFollower(self.dir, gen, offset)
            except FileNotFoundError:
                if snap is not None:
                    continue  # the writer rotated its log under us: read the new snapshot
                return None
            except (FormatError, KeyError, ValueError, TypeError):
                return None
            try:
                for body in follower.read():
                    index.add(Entry.from_log(body, self.name))
            except FileNotFoundError:
                follower.close()
                continue
            except (FormatError, ValueError, TypeError, KeyError):
                follower.close()
                return None
            return index, follower
        return None

    def open_read(self) -> None:
        loaded = self._load()
        if loaded is not None:
            self.index, self.follower = loaded
        elif self.has_segments():
            for _attempt in range(5):  # no usable index: rebuild in memory
                try:
                    self.index = recovery.rebuild(self.dir, self.name).index
                    break
                except FileNotFoundError:  # a compaction removed a segment meanwhile
                    continue
        # else: a namespace still being created; refresh() will try again

    def refresh(self) -> None:
        if self.writable:
            return
        if self.follower is None:
            self.open_read()
            return
        try:
            bodies = self.follower.read()
        except (FileNotFoundError, FormatError):  # rotated twice since we looked, or damaged
            self.follower.close()
            self.follower = None
            self.open_read()
            return
        for body in bodies:
            self.index.add(Entry.from_log(body, self.name))

    # -- writing ---------------------------------------------------------------

    def _lock(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise LockedError(f"{self.dir}: namespace {self.name!r} is locked by another writer "
                              f"({holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
        self.lock_fd = fd

    def open_write(self, segment_size: int, fsync: bool, truncate: bool = False,
                   direct: bool = False) -> None:
        """Take the lock, recover to the last committed record, get ready to append."""
        self.direct = direct
        self._lock()
        try:
            if truncate:
                self._remove_all()
            (self.dir / (SNAPSHOT + ".tmp")).unlink(missing_ok=True)
            loaded = self._load()
            if loaded is not None:
                index, follower = loaded
                gen, offset = follower.gen, follower.offset
                follower.close()
                # Cut what lies past the last committed record only if it is
                # no record, or the in-flight part of one write: else the
                # index lost entries, and the segments say what they were.
                if recovery.tail_is_torn(self.dir, recovery.tail_records(self.dir, index), index.last_n):
                    self.index = index
                    self.log = LogWriter(self.dir, gen, offset, fsync)
                    self._discard_uncommitted(segment_size, fsync)
                    return
            self.rebuild(segment_size, fsync)
        except BaseException:
            self.close()
            raise

    def _remove_all(self) -> None:
        for name in os.listdir(self.dir):
            if name != "LOCK":
                (self.dir / name).unlink()

    def _discard_uncommitted(self, segment_size: int, fsync: bool) -> None:
        """Delete segments past the last one the index points into, cut that
        one after its last record, and get ready to append there.  A segment
        the index points into but that is gone (its records reported lost)
        keeps its number: appends go to a new one after it."""
        hw = self.index.high_water()
        for stream in STREAMS:
            segs = list_segments(self.dir, stream)
            mine = {seq: end for (s, seq), end in hw.items() if s == stream}
            last = max(mine) if mine else None
            for seq in segs:
                if last is None or seq > last:
                    (self.dir / segment_name(stream, seq)).unlink()
            writer = (DirectSegmentWriter if self.direct else SegmentWriter)(
                self.dir, stream, segment_size, fsync)
            if last is not None and last in segs:
                writer.resume(last, mine[last])
            else:
                writer.seq = max([*segs, *mine], default=-1)
            self.writers[stream] = writer

    def append(self, kind: int, meta: dict, payload) -> Entry:
        """Write a record, then commit it with its log entry."""
        return self.append_many(kind, [(meta, payload)])[0]

    def append_many(self, kind: int, items: list[tuple[dict, object]],
                    checks: list[int] | None = None) -> list[Entry]:
        """Write records as one run, then commit them with one log write.

        The run may span segments; it is committed whole or not at all: a
        failure anywhere cuts every segment back to where the run began.
        Each record carries its number and its place in the run, so a
        rebuild tells a run a crash left incomplete (spec section 9).
        ``checks``: payload checksums known already (compaction's copies).
        """
        writer = self.writers[fmt.KIND_STREAM[kind]]
        packed = [(fmt.pack_meta(meta), payload) for meta, payload in items]
        first_n = self.index.last_n + 1
        start = writer.position()
        placed: list[tuple[int, int, int, int]] = []
        try:
            while len(placed) < len(items):
                done = len(placed)
                placed += writer.append_run(kind, packed[done:], first_n + done, done, len(items),
                                            None if checks is None else checks[done:])
            entries = []
            for i, ((seq, offset, hlen, checksum), (meta, payload)) in enumerate(zip(placed, items)):
                extra = None
                if kind == fmt.KIND_VARIANT:
                    extra = {k: v for k, v in meta.items() if k not in ("key", "dtype", "shape", "time")}
                entries.append(Entry(kind, meta["key"], seq, offset, hlen, len(payload), meta["dtype"],
                                     tuple(meta["shape"]), checksum, meta["time"], extra, self.name,
                                     first_n + i))
            self.log.append([e.to_log() for e in entries])
        except BaseException as exc:
            failed = items[len(placed) if len(placed) < len(items) else 0][0]["key"]
            where = writer.path
            try:
                writer.rollback_to(*start)
            except OSError:
                pass  # the records stay uncommitted: recovery cuts them
            if isinstance(exc, OSError) and not isinstance(exc, WriteError):
                raise WriteError(exc.errno, f"{exc.strerror or exc} while writing {failed!r} "
                                 f"({len(items)} records, none committed) to {where}") from exc
            raise
        for e in entries:
            self.index.add(e)
        if self.log.count >= max(CHECKPOINT_EVERY, len(self.index) // 4):
            self.checkpoint()
        return entries

    def sync(self) -> None:
        for w in self.writers.values():
            w.sync()
        if self.log is not None:
            self.log.sync()

    def checkpoint(self) -> None:
        """Snapshot the index and rotate the log (spec section 6)."""
        self._rotate(self.log.gen + 1, self.log.fsync)

    def _rotate(self, gen: int, fsync: bool) -> dict:
        """Publish a snapshot that continues in log ``gen``; return its body."""
        self.sync()
        create_log(self.dir, gen)
        body = self.index.to_snapshot(gen, fmt.LOG_HEADER_SIZE)
        write_snapshot(self.dir, body)
        if self.log is not None:
            self.log.close()
        self.log = LogWriter(self.dir, gen, fmt.LOG_HEADER_SIZE, fsync)
        for old in list_logs(self.dir):
            if old < gen:
                (self.dir / log_name(old)).unlink(missing_ok=True)
        return body

    def close(self) -> None:
        try:
            if self.log is not None:
                if self.log.count >= CHECKPOINT_ON_CLOSE:
                    self.checkpoint()
                self.sync()
                fsync_dir(self.dir)
        finally:
            for w in self.writers.values():
                w.close()
            self.writers.clear()
            if self.log is not None:
                self.log.close()
                self.log = None
            if self.follower is not None:
                self.follower.close()
                self.follower = None
            if self.lock_fd is not None:
                os.close(self.lock_fd)
                self.lock_fd = None
            self.maps.forget()

    # -- rebuild, verify, compact -----------------------------------------------

    def rebuild(self, segment_size: int, fsync: bool) -> int:
        """Rebuild the index from the segments and commit it. Returns the entry count;
        ``self.lost`` lists the newest versions that no longer check out.

        The new index is published as one snapshot (atomic rename), so a crash
        during a rebuild leaves either the old state or the new one.
        """
        self.index, self.lost = recovery.rebuild(self.dir, self.name)
        self._rotate(max(list_logs(self.dir), default=-1) + 1, fsync)
        for w in self.writers.values():
            w.close()
        self.writers.clear()
        self._discard_uncommitted(segment_size, fsync)
        return len(self.index)

    def verify(self) -> list[Problem]:
        """Check every live record's header and payload against the index."""
        problems = []
        for e in self.index.entries():
            try:
                m = self.maps.get(e.stream, e.seq, e.end)
                rec = fmt.unpack_record_header(m, e.offset, e.segment)
                if (rec.meta.get("key") != e.key or rec.payload_len != e.payload_len
                        or rec.checksum != e.checksum or rec.header_len != e.header_len
                        or (rec.version >= 2 and (rec.n, rec.seg, rec.at) != (e.n, e.seq, e.offset))):
                    raise FormatError("record header disagrees with the index")
                if fmt.xxh3(memoryview(m)[e.payload_offset:e.payload_offset + e.payload_len]) != e.checksum:
                    raise FormatError("payload checksum mismatch")
            except FormatError as exc:
                problems.append(Problem(e.key, e.segment, e.offset, str(exc).split(": ")[-1]))
            except FileNotFoundError:
                problems.append(Problem(e.key, e.segment, e.offset, "segment file is missing"))
        known = {(p.segment, p.offset) for p in problems}
        problems += [Problem("(unreadable record)", seg, off, why)
                     for seg, off, why in recovery.invalid_records(self.dir, self.index)
                     if (seg, off) not in known]
        return problems

    def compact(self) -> tuple[int, int]:
        """Copy live records to new segments and drop the old ones.

        Returns (bytes before, bytes after). Each copied record is committed
        with a new log entry, so readers following the log see the move.
        """
        for w in self.writers.values():
            w.trim()   # direct I/O's padding is no garbage to reclaim
        before = self.disk_bytes()
        live = sorted(self.index.entries(), key=lambda e: (e.stream, e.seq, e.offset))
        live_bytes = sum(e.end - e.offset for e in live)
        old = {s: list_segments(self.dir, s) for s in STREAMS}
        nsegs = sum(len(v) for v in old.values())
        if before - nsegs * fmt.SEG_HEADER_SIZE <= live_bytes:
            return before, before  # nothing to reclaim
        for stream in STREAMS:
            self.writers[stream].close()
            self.writers[stream].seq = max([*old[stream], self.writers[stream].seq])
        present = {(s, q) for s, qs in old.items() for q in qs}
        batch: list[Entry] = []
        for i, e in enumerate(live):
            if (e.stream, e.seq) in present:
                batch.append(e)   # an entry whose segment is gone stays as it is (lost)
            if batch and (i + 1 == len(live) or live[i + 1].kind != batch[0].kind
                          or len(batch) >= COMPACT_BATCH):
                self._copy(batch)
                batch = []
        body = self._rotate(self.log.gen + 1, self.log.fsync)
        self.maps.forget()
        for stream, seqs in old.items():
            for seq in seqs:
                (self.dir / segment_name(stream, seq)).unlink(missing_ok=True)
        self.index = Index.from_snapshot(body, self.name)  # only the moved entries
        return before, self.disk_bytes()

    def _copy(self, entries: list[Entry]) -> None:
        """Copy records as one run, keeping their payload checksums: a damaged
        payload stays damaged, and verify still finds it."""
        items = []
        for e in entries:
            m = self.maps.get(e.stream, e.seq, e.payload_offset + e.payload_len)
            meta = {"key": e.key, "dtype": e.dtype, "shape": list(e.shape), "time": e.time, **(e.extra or {})}
            items.append((meta, memoryview(m)[e.payload_offset:e.payload_offset + e.payload_len]))
        self.append_many(entries[0].kind, items, checks=[e.checksum for e in entries])

    def disk_bytes(self) -> int:
        return sum(os.path.getsize(self.dir / segment_name(s, q))
                   for s in STREAMS for q in list_segments(self.dir, s))
