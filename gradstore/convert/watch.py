"""Follow a live training output directory and convert each file once it is complete.

torch.save is not atomic: a file appears empty and grows.  A file is taken
only when both hold:

1. settled: its (inode, size, mtime) has not changed for ``settle`` seconds
   of this process's own clock (no trust in the writer's clock), and
2. complete: the format's structural check passes (a torch zip archive ends
   with its central directory, a safetensors header must cover the file
   exactly, HDF5 refuses files a writer holds open), after which the reader
   parses it fully.

A file that stays settled but incomplete for ``give_up`` seconds is
reported once; if it changes later it is tried again.  Files are taken in
arrival order.  Nothing is remembered across restarts: a restart sees every
file again, and the store skips what it holds already (same key, same
checksum), so nothing is duplicated; files are deleted only after they are
verified in the store, so nothing is lost.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import source
from .pipeline import DEFAULT_JOBS, Converter, open_store
from .progress import Display, Report
from .readers import readers_need, refuse_if_rerun
from .signals import GracefulStop

SETTLE = 2.0
GIVE_UP = 120.0
POLL = 0.25


@dataclass
class Tracked:
    seq: int                      # arrival order
    ident: tuple[int, int, int, int]
    since: float                  # when this ident was first seen (monotonic)
    state: str = "waiting"        # waiting | taken | failed


def _ident(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Watcher:
    """Tells which files of a directory tree are ready, in arrival order."""

    def __init__(self, directory: str | os.PathLike, settle: float = SETTLE,
                 give_up: float = GIVE_UP, clock=time.monotonic):
        self.dir = Path(directory)
        self.settle = settle
        self.give_up = give_up
        self.clock = clock
        self.files: dict[str, Tracked] = {}
        self._seq = 0

    def _scan(self) -> dict[str, os.stat_result]:
        found = {}
        for root, dirs, names in os.walk(self.dir):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in names:
                path = Path(root) / name
                if source.is_candidate(path):
                    try:
                        found[str(path)] = os.stat(path)
                    except FileNotFoundError:
                        pass
        return found

    def poll(self) -> tuple[list[str], list[str]]:
        """(files ready to convert, files given up as incomplete) since the last poll."""
        now = self.clock()
        seen = self._scan()
        for path in [p for p in self.files if p not in seen]:
            del self.files[path]
        fresh = sorted((st.st_mtime_ns, p) for p, st in seen.items() if p not in self.files)
        for _, path in fresh:
            self.files[path] = Tracked(self._seq, _ident(seen[path]), now)
            self._seq += 1
        for path, t in self.files.items():
            ident = _ident(seen[path])
            if ident != t.ident:
                t.ident, t.since, t.state = ident, now, "waiting"
        ready, stuck = [], []
        for path, t in sorted(self.files.items(), key=lambda pt: pt[1].seq):
            if t.state != "waiting" or now - t.since < self.settle:
                continue
            if self._complete(path):
                t.state = "taken"
                ready.append(path)
            elif now - t.since >= self.give_up:
                t.state = "failed"
                stuck.append(path)
        return ready, stuck

    def _complete(self, path: str) -> bool:
        try:
            return source.module_for(path).is_complete(path)
        except (OSError, source.SourceError):
            return False

    def waiting(self) -> list[str]:
        return [p for p, t in self.files.items() if t.state == "waiting"]


def watch(directory: str | os.PathLike, dest, *, once: bool = False, settle: float = SETTLE,
          give_up: float = GIVE_UP, jobs: int = DEFAULT_JOBS, dtype: str | None = None,
          delete_source: bool = False, display: Display | None = None) -> Report:
    """Convert the files of ``directory`` as they are completed, until stopped.

    SIGINT or SIGTERM ends it cleanly: the files in hand are finished and
    committed, the others wait for the next run.  ``once``: convert what is
    there and return; files still being written are left for the next run,
    and files that are settled but incomplete are reported at once.
    """
    refuse_if_rerun()
    if not Path(directory).is_dir():
        raise source.SourceError(f"{directory}: not a directory")
    display = display or Display()
    report = Report()
    watcher = Watcher(directory, settle, settle if once else give_up)
    start = time.monotonic()
    with open_store(dest) as gs, GracefulStop() as stop, \
            Converter(gs, jobs=jobs, dtype=dtype, delete_source=delete_source, display=display,
                      report=report, preload=readers_need(None)) as conv:
        display.note(f"watching {directory} (settle {settle:g} s"
                     + (", once)" if once else "; stop with Ctrl-C or SIGTERM)"))
        while not stop.requested:
            ready, stuck = watcher.poll()
            for path in ready:
                conv.add(path)
            for path in stuck:
                line = (f"{path}: incomplete: unchanged for {watcher.give_up:g} s but not a "
                        f"complete {Path(path).suffix} file (truncated, or its writer stalled)")
                report.errors.append((path, line))
                display.error(line)
            if conv.idle:
                conv.commit()
                if once and not ready and time.monotonic() - start >= settle:
                    break
                time.sleep(POLL)
            else:
                conv.step(timeout=POLL)
        report.files_left += conv.cancel_queued()
        conv.drain()
        conv.commit()
        conv.drain()
        report.files_left += len(watcher.waiting())
    report.elapsed = time.monotonic() - report.started
    display.close(report)
    return report
