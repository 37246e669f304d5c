"""The results file: every KeyResult a report measured, so a stopped report resumes.

Format (version 1), by default the file ``<store>.results`` next to the store
directory (``run.gs`` -> ``run.gs.results``)::

    gradstore-results 1\n                      the first line
    <xxh3-64 of JSON, 16 hex digits> <JSON>\n   one line per KeyResult (its to_dict())

Only the main process of a report appends to it, one task's records at a
time, flushed at once, under an exclusive lock (a second report on the same
file falls back to a temporary one).  A line that does not end in a newline
or whose checksum does not match (a torn last line after a SIGKILL) is
ignored, and a torn tail is cut before anything is appended.  The newest
line for a (key, codec) wins; it counts only while its ``src`` is the
checksum of the key's raw record, so a rewritten tensor is measured again.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Iterable, Iterator

import xxhash

from .result import KeyResult

MAGIC = b"gradstore-results 1\n"


def default_path(store_path) -> Path:
    p = Path(store_path)
    return p.with_name(p.name + ".results")


def _check(text: bytes) -> bytes:
    return b"%016x" % xxhash.xxh3_64_intdigest(text)


def encode_line(r: KeyResult) -> bytes:
    text = json.dumps(r.to_dict(), separators=(",", ":"), allow_nan=True).encode()
    return _check(text) + b" " + text + b"\n"


def decode_line(line: bytes) -> KeyResult | None:
    """The record of one line, or None if it is torn or damaged."""
    if len(line) < 18 or not line.endswith(b"\n") or line[16:17] != b" ":
        return None
    text = line[17:-1]
    if line[:16] != _check(text):
        return None
    try:
        return KeyResult.from_dict(json.loads(text))
    except (ValueError, TypeError):
        return None


class ResultsFile:
    """An open results file: what it holds (``index``), and appending to it."""

    def __init__(self, path: Path, f, temporary: bool = False):
        self.path = path
        self._f = f
        self.temporary = temporary
        # (key, codec) -> (src, offset of its newest line)
        self.index: dict[tuple[str, str], tuple[int, int]] = {}
        self.ignored = 0     # damaged lines skipped
        self._cleanup = None
        if temporary:
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(path.parent), True)

    @classmethod
    def open(cls, path, fresh: bool = False) -> "ResultsFile":
        """Open (or create) ``path`` for this report; OSError if it cannot be written or is
        in use by another report."""
        path = Path(path)
        f = open(path, "a+b")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise OSError(f"{path} is in use by another report") from None
        try:
            rf = cls(path, f)
            rf._load(fresh)
        except BaseException:
            f.close()
            raise
        return rf

    @classmethod
    def temporary(cls) -> "ResultsFile":
        """A results file that lives as long as this object: no resume, bounded memory."""
        d = Path(tempfile.mkdtemp(prefix="gradstore-report-"))
        path = d / "results"
        rf = cls(path, open(path, "w+b"), temporary=True)
        rf._load(True)
        return rf

    def _load(self, fresh: bool) -> None:
        f = self._f
        f.seek(0)
        if fresh or f.read(len(MAGIC)) != MAGIC:
            if not fresh and f.seek(0, os.SEEK_END) > 0:
                raise OSError(f"{self.path} is not a gradstore results file (pass --fresh to replace it)")
            f.truncate(0)
            f.write(MAGIC)
            f.flush()
            return
        pos = len(MAGIC)
        good_end = pos
        for line in f:
            r = decode_line(line)
            if r is None:
                if line.endswith(b"\n"):
                    self.ignored += 1
                    good_end = pos + len(line)
            else:
                self.index[(r.key, r.codec)] = (r.src, pos)
                good_end = pos + len(line)
            pos += len(line)
        if good_end != pos:      # a torn last line: cut it, so appends start on a line of their own
            f.truncate(good_end)
        f.seek(0, os.SEEK_END)

    def done(self, key: str, specs: Iterable[str], src: int) -> bool:
        """True when every spec of ``key`` was measured from the tensor with checksum ``src``."""
        for spec in specs:
            have = self.index.get((key, spec))
            if have is None or have[0] != src:
                return False
        return True

    def append(self, results: list[KeyResult]) -> None:
        """Append records and hand them to the OS at once (a SIGKILL later loses none)."""
        f = self._f
        pos = f.seek(0, os.SEEK_END)
        lines = [encode_line(r) for r in results]
        f.write(b"".join(lines))
        f.flush()
        for r, line in zip(results, lines):
            self.index[(r.key, r.codec)] = (r.src, pos)
            pos += len(line)

    def read(self, offsets: set[int]) -> Iterator[KeyResult]:
        """The records at ``offsets``, in file order (a separate handle: appends may go on)."""
        if not offsets:
            return
        with open(self.path, "rb") as f:
            f.seek(len(MAGIC))
            pos = len(MAGIC)
            for line in f:
                if pos in offsets:
                    r = decode_line(line)
                    if r is not None:
                        yield r
                pos += len(line)

    def offsets(self, keys: Iterable[str], specs: list[str]) -> set[int]:
        """Where the current records of ``keys`` x ``specs`` are."""
        out = set()
        for k in keys:
            for s in specs:
                have = self.index.get((k, s))
                if have is not None:
                    out.add(have[1])
        return out

    def close(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.close()

    def remove(self) -> None:
        """Delete a temporary file now."""
        self.close()
        if self._cleanup is not None:
            self._cleanup()
