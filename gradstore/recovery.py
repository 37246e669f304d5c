"""Recovery: what the segments say when the index cannot be trusted (spec section 9).

Two questions are answered here, both from the records themselves:

- ``tail_is_torn``: may the bytes past the last committed record be cut?
  Only when they hold no valid record but those of the one write that was
  in flight, left incomplete.  Anything else means the index lost entries,
  and the namespace is rebuilt instead: recovery never destroys a record
  that checks out.
- ``rebuild``: the index of every valid record, newest version of each entry
  id by record number, checked against what the old index files (as far as
  they still read) say was committed, so that a damaged or missing newest
  version is reported as lost instead of an older one coming back.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from . import format as fmt
from .errors import FormatError
from .index import Entry, Index
from .log import list_logs, log_name, read_snapshot
from .segment import list_segments, scan, segment_name

STREAMS = (fmt.STREAM_DATA, fmt.STREAM_VAR)


class Found(NamedTuple):
    """A valid record found by a scan."""

    stream: int
    seq: int
    offset: int
    rec: fmt.RecordHeader

    @property
    def end(self) -> int:
        return self.offset + self.rec.total


def _scan_segment(ns_dir: Path, stream: int, seq: int, start: int = fmt.SEG_HEADER_SIZE) -> list[Found]:
    """Valid records of one segment from ``start`` (none in a file too short
    to be a segment)."""
    try:
        records = scan(ns_dir / segment_name(stream, seq), start)
    except FormatError:
        return []
    return [Found(stream, seq, off, rec) for off, rec in records
            if fmt.KIND_STREAM.get(rec.kind) == stream]


def invalid_records(ns_dir: Path, index: Index) -> list[tuple[str, int, str]]:
    """(segment, offset, reason) of what should be a record and is not, in the
    committed part of each segment (up to the last record the index points
    into: past it, a writer may be appending)."""
    hw = index.high_water()
    out = []
    for stream in STREAMS:
        mine = {seq: end for (s, seq), end in hw.items() if s == stream}
        last = max(mine, default=-1)
        for seq in list_segments(ns_dir, stream):
            if seq > last:
                break
            bad: list[tuple[int, str]] = []
            try:
                scan(ns_dir / segment_name(stream, seq), stop=mine[seq] if seq == last else None, bad=bad)
            except (FormatError, FileNotFoundError):
                continue  # too short to be a segment: the index's entries there say so
            out += [(f"{ns_dir.name}/{segment_name(stream, seq)}", off, why) for off, why in bad]
    return out


# -- the tail past the last committed record -------------------------------------------


def tail_records(ns_dir: Path, index: Index) -> list[Found]:
    """Valid records past the high-water mark of each stream: in the segment of
    the last committed record after it, and in every later segment."""
    hw = index.high_water()
    found: list[Found] = []
    for stream in STREAMS:
        mine = {seq: end for (s, seq), end in hw.items() if s == stream}
        last = max(mine) if mine else -1
        for seq in list_segments(ns_dir, stream):
            if seq == last:
                found += _scan_segment(ns_dir, stream, seq, mine[seq])
            elif seq > last:
                found += _scan_segment(ns_dir, stream, seq)
    return found


def tail_is_torn(ns_dir: Path, found: list[Found], last_n: int) -> bool:
    """True when records past the committed ones may be cut: none at all, or
    an incomplete part of one run numbered after every committed record (the
    write call in flight at a crash: its log entries come after all its
    records, so it never committed)."""
    if not found:
        return True
    runs = {(f.rec.run_first, f.rec.run_len) for f in found}
    if len(runs) != 1 or any(f.rec.version < 2 for f in found):
        return False
    (first, run_len), = runs
    return first > last_n and _is_torn(ns_dir, found, run_len)


def _is_torn(ns_dir: Path, members: list[Found], run_len: int) -> bool:
    """True when the records present of a run are what a crash leaves.  A run
    is written in order, so a cut-short run has its first records and lacks
    the rest, and what follows its last record is no damaged record (a gap
    before a present record, or a damaged record after it, is damage)."""
    present = {f.rec.run_index for f in members}
    return (0 < len(present) < run_len and present == set(range(len(present)))
            and _cut_after(ns_dir, max(members, key=lambda f: f.rec.n)))


# -- rebuild ---------------------------------------------------------------------------


class Rebuilt(NamedTuple):
    index: Index
    lost: list[Entry]     # newest versions the old index knew that no longer check out


def committed_evidence(ns_dir: Path, name: str) -> dict[str, Entry]:
    """Entry id -> the newest entry the old index files still vouch for.

    The snapshot and every log are read as far as they are intact; damage
    ends what a file says, never what the others say.
    """
    out: dict[str, Entry] = {}

    def take(e: Entry) -> None:
        old = out.get(e.id)
        if old is None or e.n >= old.n:
            out[e.id] = e

    try:
        snap = read_snapshot(ns_dir)
        if snap is not None:
            for e in Index.from_snapshot(snap, name).entries():
                take(e)
    except (FormatError, KeyError, ValueError, TypeError):
        pass
    for gen in list_logs(ns_dir):
        try:
            data = (ns_dir / log_name(gen)).read_bytes()
        except OSError:
            continue
        for body in _intact_entries(data):
            try:
                take(Entry.from_log(body, name))
            except (FormatError, ValueError, TypeError):
                continue
    return out


def _intact_entries(data: bytes) -> list:
    """Every log entry whose frame checks out, past damage too: after a bad
    frame (or a damaged log header) the next intact frame is searched for
    byte by byte, since each frame carries its own checksum."""
    out = []
    pos = fmt.LOG_HEADER_SIZE
    while pos < len(data):
        entries, stop, _ = fmt.unpack_log_entries(data, pos)
        out += entries
        pos = stop + 1  # stop is where reading ended: damage, a torn tail or the end
        while pos + fmt.LOG_FRAME.size <= len(data) and not _frame_at(data, pos):
            pos += 1
        if pos + fmt.LOG_FRAME.size > len(data):
            break
    return out


def _frame_at(data: bytes, pos: int) -> bool:
    n, check = fmt.LOG_FRAME.unpack_from(data, pos)
    end = pos + fmt.LOG_FRAME.size + n
    return end <= len(data) and fmt.xxh3(data[pos + fmt.LOG_FRAME.size:end]) == check


def _torn_run(ns_dir: Path, found: list[Found], vouched: set[int]) -> set[int]:
    """Record numbers of the newest run when a crash left it incomplete: it
    holds the greatest record number, has its first records and lacks the
    rest, and no index file vouches for any of them (a run is committed as a
    whole, after all its records are written)."""
    v2 = [f for f in found if f.rec.version >= 2]
    if not v2:
        return set()
    newest = max(v2, key=lambda f: f.rec.n).rec
    first, run_len = newest.run_first, newest.run_len
    members = [f for f in v2 if f.rec.run_first == first and f.rec.run_len == run_len]
    if set(range(first, first + run_len)) & vouched or not _is_torn(ns_dir, members, run_len):
        return set()
    return {f.rec.n for f in members}


def _cut_after(ns_dir: Path, last: Found) -> bool:
    """True when what follows a run's last present record is what a crash
    leaves, not a damaged record: the end of the stream (no more bytes, or a
    next segment too short to hold its header), zeros where a large run's
    header was not yet filled in, or a record the file ends inside (a write
    cut short)."""
    path, pos = ns_dir / segment_name(last.stream, last.seq), last.end
    if pos >= path.stat().st_size:
        path, pos = ns_dir / segment_name(last.stream, last.seq + 1), fmt.SEG_HEADER_SIZE
        if not path.exists() or path.stat().st_size <= pos:
            return True
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(pos)
        buf = f.read(1 << 16)
    if len(buf) < fmt.REC_FIXED.size or buf[:fmt.REC_FIXED.size].count(0) == fmt.REC_FIXED.size:
        return True  # a header cut short, or one a large run had not filled in yet
    magic, version, _kind, meta_len, header_len, _plen, _check = fmt.REC_FIXED.unpack_from(buf)
    if (magic == fmt.REC_MAGIC and version == fmt.VERSION
            and header_len == fmt.align(fmt.REC_FIXED_SIZE[version] + meta_len) and pos + header_len > size):
        return True  # the file ends inside this header
    try:
        rec = fmt.unpack_record_header(buf, 0, path.name)
    except FormatError:
        return False
    return pos + rec.total > size


def rebuild(ns_dir: Path, name: str) -> Rebuilt:
    """The index of a namespace from its segments, checked against the old index files."""
    found = [f for stream in STREAMS for seq in list_segments(ns_dir, stream)
             for f in _scan_segment(ns_dir, stream, seq)]
    evidence = committed_evidence(ns_dir, name)
    torn = _torn_run(ns_dir, found, {e.n for e in evidence.values() if e.n})
    if torn:  # cut with the uncommitted tail once the index is published
        found = [f for f in found if f.rec.n not in torn]
    index = Index(name)
    # Version-1 records have no number: their order is their place, and any
    # version-2 record is newer.
    for f in sorted(found, key=lambda f: (f.rec.n, f.seq, f.offset)):
        index.add(Entry.from_record(f.rec, f.seq, f.offset, name))
    lost = []
    for e in evidence.values():
        have = index.get(e.kind, e.id)
        if have is None or e.n > have.n:
            index.add(e)   # the newest version stays named, pointing at what is left of it
            lost.append(e)
    return Rebuilt(index, lost)
