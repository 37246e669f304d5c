"""Index log files and the snapshot file of a namespace (spec sections 5 and 6)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from . import format as fmt
from .errors import FormatError
from .fileio import FileHandle, fsync_dir, write_all

SNAPSHOT = "index.snap"
_LOG_RE = re.compile(r"index-([0-9]{6,})\.log")


def log_name(gen: int) -> str:
    return f"index-{gen:06d}.log"


def list_logs(ns_dir: Path) -> list[int]:
    return sorted(int(m.group(1)) for n in os.listdir(ns_dir) if (m := _LOG_RE.fullmatch(n)))


def read_snapshot(ns_dir: Path) -> dict | None:
    """The snapshot body, None if there is none; FormatError if it is damaged."""
    path = ns_dir / SNAPSHOT
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return fmt.unpack_snapshot(data, f"{ns_dir.name}/{SNAPSHOT}")


def write_snapshot(ns_dir: Path, body: dict) -> None:
    """Atomically replace the snapshot: write a temporary file, fsync, rename, fsync the dir."""
    tmp = ns_dir / (SNAPSHOT + ".tmp")
    data = fmt.pack_snapshot(body)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, [data])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, ns_dir / SNAPSHOT)
    fsync_dir(ns_dir)


def create_log(ns_dir: Path, gen: int) -> None:
    """A new, empty, durable log of generation ``gen``."""
    tmp = ns_dir / (log_name(gen) + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, [fmt.pack_log_header(gen)])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, ns_dir / log_name(gen))
    fsync_dir(ns_dir)


class LogFollower(FileHandle):
    """Reads a namespace's log entries as they are committed, across rotations."""

    def __init__(self, ns_dir: Path, gen: int, offset: int):
        self.dir = ns_dir
        self.gen = gen
        self.offset = offset
        self.fd = self._open(gen)

    def _open(self, gen: int) -> int:
        fd = os.open(self.dir / log_name(gen), os.O_RDONLY)  # FileNotFoundError handled by callers
        try:
            head = os.pread(fd, fmt.LOG_HEADER_SIZE, 0)
            got = fmt.check_log_header(head, f"{self.dir.name}/{log_name(gen)}")
            if got != gen:
                raise FormatError(f"{self.dir.name}/{log_name(gen)}: header says generation {got}")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read(self) -> list[list]:
        """Entries committed since the last call (stops before a torn entry).

        Raises FileNotFoundError when the log was rotated away twice since
        the last call (the caller reloads from the snapshot), and FormatError
        when a complete entry is damaged.
        """
        out: list[list] = []
        while True:
            final = (self.dir / log_name(self.gen + 1)).exists()
            size = os.fstat(self.fd).st_size
            if size > self.offset:
                data = os.pread(self.fd, size - self.offset, self.offset)
                entries, used, damaged = fmt.unpack_log_entries(data, 0)
                out.extend(entries)
                self.offset += used
                if damaged:
                    raise FormatError(f"{self.dir.name}/{log_name(self.gen)} @ {self.offset}: "
                                      "damaged index log entry")
            if not final:
                if os.fstat(self.fd).st_nlink == 0 and not (self.dir / log_name(self.gen + 1)).exists():
                    raise FileNotFoundError(f"{self.dir.name}/{log_name(self.gen)} was rotated away")
                if os.fstat(self.fd).st_nlink:
                    return out
                continue
            # Log gen is final once gen+1 exists: move on.
            fd = self._open(self.gen + 1)
            os.close(self.fd)
            self.fd, self.gen, self.offset = fd, self.gen + 1, fmt.LOG_HEADER_SIZE


class LogWriter(FileHandle):
    """Appends entries to the newest log, one write call per batch."""

    def __init__(self, ns_dir: Path, gen: int, offset: int, fsync: bool):
        self.dir = ns_dir
        self.gen = gen
        self.fsync = fsync
        self.fd = os.open(ns_dir / log_name(gen), os.O_WRONLY)
        os.ftruncate(self.fd, offset)  # drops a torn tail
        os.lseek(self.fd, offset, os.SEEK_SET)
        self.offset = offset
        self.dirty = False
        self.count = 0

    def append(self, bodies: list[list]) -> None:
        """Append entries with one write call: together they commit."""
        data = b"".join([fmt.pack_log_entry(body) for body in bodies])
        try:
            write_all(self.fd, [data])
        except BaseException:
            os.ftruncate(self.fd, self.offset)
            os.lseek(self.fd, self.offset, os.SEEK_SET)
            raise
        self.offset += len(data)
        self.count += len(bodies)
        self.dirty = True
        if self.fsync:
            os.fsync(self.fd)
