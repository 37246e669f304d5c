"""The conversion pipeline: reader processes feed one writer, a few parts in flight.

The writer (this process) owns the store.  It plans each source file into
parts, hands parts to a pool of reader processes (at most ``jobs + 1`` in
flight, which bounds memory to a few buckets), and stores each batch as it
comes back.  With ``delete_source``, a converted file waits for the next
commit: the store is fsynced, a reader checksums the file again, and the
file is deleted only if every tensor matches what the store holds.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from . import source, worker
from .ingest import ingest, matches
from .progress import Display, Report
from .readers import (MainGuardError, discard_broken, make_executor, readers_need, refuse_if_rerun,
                      reran_main)
from .signals import GracefulStop
from .source import Part, SourceError, one_line
from .spool import Spool
from .transfer import Ref

DEFAULT_JOBS = min(4, os.cpu_count() or 1)
SYNC_BYTES = 1 << 30   # with delete_source, commit (and delete) at least this often


@dataclass(frozen=True)
class Task:
    """What a future in flight stands for."""

    kind: str                 # "read" a part, or "verify" a whole file before deleting it
    file: "SourceFile"
    part: Part | None
    executor: Executor        # the pool it went to (a broken pool fails all its tasks)
    retried: bool = False     # handed out again after a reader died
    call: tuple = ()          # (fn, *args), to hand it out again


@dataclass(eq=False)
class SourceFile:
    path: str
    format: str
    parts: deque[Part]
    nbytes: int = 0               # estimate from the plan
    pending: int = 0              # parts handed to readers, not yet back
    written: int = 0
    errors: list[str] = field(default_factory=list)
    refs: dict[str, Ref] = field(default_factory=dict)
    stat: tuple | None = None     # when planned: a reader that dies on a changed file blames it

    @property
    def done(self) -> bool:
        return not self.parts and not self.pending


@contextmanager
def open_store(dest) -> Iterator[object]:
    """A store to write into: ``dest`` opened for appending, or an open store as given."""
    if isinstance(dest, (str, os.PathLike)):
        import gradstore
        with gradstore.open(dest, mode="a") as gs:
            yield gs
    else:
        yield dest


class Converter:
    """Moves source files into an open store; see the module docstring."""

    def __init__(self, gs, *, jobs: int = DEFAULT_JOBS, dtype: str | None = None,
                 delete_source: bool = False, display: Display | None = None,
                 report: Report | None = None, sync_bytes: int = SYNC_BYTES,
                 preload: tuple[str, ...] = ()):
        if jobs < 0:
            raise ValueError(f"jobs must be 0 or more, got {jobs}")
        self.gs = gs
        self.jobs = jobs
        self.dtype = dtype
        self.delete_source = delete_source
        self.display = display or Display()
        self.report = report or Report()
        self.sync_bytes = sync_bytes
        self.capacity = jobs + 1 if jobs > 0 else 1   # parts in flight: a few buckets at most
        self.queue: deque[str] = deque()           # files not started
        self.active: deque[SourceFile] = deque()   # files with parts not yet handed out
        self.inflight: dict[Future, Task] = {}
        self.to_verify: list[SourceFile] = []      # converted, waiting for a commit
        self.unsynced = 0
        self.preload = preload
        self.spool = Spool()
        self.executor = make_executor(jobs, preload)

    # -- feeding -----------------------------------------------------------------

    def add(self, path: str | os.PathLike) -> None:
        path = str(path)
        self.queue.append(path)
        self.report.files_seen += 1
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        self.display.grow(1, size)

    def cancel_queued(self) -> int:
        """Forget the files not started yet (a stop was asked for); how many they were."""
        n = len(self.queue)
        self.queue.clear()
        return n

    @property
    def idle(self) -> bool:
        return not (self.queue or self.active or self.inflight)

    def _plan(self, path: str) -> SourceFile | None:
        try:
            fmt = source.format_of(path)
            parts = source.module_for(path).plan(path, self.dtype)
        except (SourceError, OSError) as exc:
            self._finish_file(SourceFile(path, fmt or "", deque(), errors=[_message(path, exc)]))
            try:
                self.display.advance(self.report, os.path.getsize(path))
            except OSError:
                pass
            return None
        est = sum(p.nbytes for p in parts)
        try:
            self.display.grow(0, est - os.path.getsize(path))
        except OSError:
            pass
        return SourceFile(path, fmt, deque(parts), est, stat=_stat(path))

    def _next_part(self) -> tuple[SourceFile, Part] | None:
        while self.active and not self.active[0].parts:
            self.active.popleft()
        while not self.active and self.queue:
            sf = self._plan(self.queue.popleft())
            if sf is not None:
                self.active.append(sf)
        if not self.active:
            return None
        sf = self.active[0]
        return sf, sf.parts.popleft()

    def _fill(self) -> None:
        while len(self.inflight) < self.capacity:
            nxt = self._next_part()
            if nxt is None:
                return
            sf, part = nxt
            sf.pending += 1
            self._submit("read", sf, part, worker.read_part, part, self.dtype, str(self.spool.path))

    def _submit(self, kind: str, sf: SourceFile, part: Part | None, fn, *args,
                retried: bool = False) -> None:
        try:
            fut = self.executor.submit(fn, *args)
        except BrokenProcessPool:
            self._restart_pool(self.executor)
            fut = self.executor.submit(fn, *args)
        self.inflight[fut] = Task(kind, sf, part, self.executor, retried, (fn, *args))

    def _restart_pool(self, broken: Executor) -> None:
        """A reader died: every task of its pool fails; later ones go to a new pool."""
        if reran_main(broken):
            raise MainGuardError() from None
        if broken is self.executor:
            discard_broken(broken)
            self.executor = make_executor(self.jobs, self.preload)

    # -- running -----------------------------------------------------------------

    def step(self, timeout: float | None = None) -> None:
        """Hand out parts, then handle whatever comes back within ``timeout``."""
        self._fill()
        if not self.inflight:
            return
        done, _ = wait(list(self.inflight), timeout=timeout, return_when=FIRST_COMPLETED)
        for fut in [f for f in self.inflight if f in done]:  # in the order handed out
            task = self.inflight.pop(fut)
            exc = fut.exception()
            if isinstance(exc, BrokenProcessPool):
                self._restart_pool(task.executor)
                exc = self._reader_died(task)
                if exc is None:
                    continue
            if task.kind == "read":
                self._read_done(task.file, task.part, fut, exc)
            else:
                self._verify_done(task.file, fut, exc)
        self._fill()

    def _reader_died(self, task: Task) -> SourceError | None:
        """A reader died, and with it every task of its pool: which of them failed?

        A task whose file changed since it was planned is blamed (a mapped file
        truncated under a reader kills it with SIGBUS); the others were only in
        the same pool, so they are handed out once more to the new one.
        """
        sf = task.file
        if _stat(sf.path) != sf.stat:
            doing, outcome = ("read", "not stored") if task.kind == "read" else ("verified", "not deleted")
            return SourceError(f"{sf.path}: changed while it was being {doing} (a reader process died "
                               f"reading it: truncated or rewritten meanwhile?); {outcome}")
        if not task.retried:
            self._submit(task.kind, sf, task.part, *task.call, retried=True)
            return None
        return SourceError(f"{sf.path}: a reader process died while this file was in flight, "
                           "twice (out of memory, or a crash in a reading library)")

    def run(self, stop: GracefulStop | None = None) -> None:
        """Convert everything added; on a stop request finish only the files in hand."""
        while not self.idle:
            if stop is not None and stop.requested and self.queue:
                self.report.files_left += self.cancel_queued()
                self.report.interrupted = True
            self.step(timeout=0.25)
        self.commit()
        self.drain()

    def drain(self) -> None:
        while self.inflight or self.active:
            self.step(timeout=0.25)

    # -- results -----------------------------------------------------------------

    def _read_done(self, sf: SourceFile, part: Part, fut: Future, exc: BaseException | None) -> None:
        sf.pending -= 1
        if exc is not None:
            sf.errors.append(_message(sf.path, exc))
        else:
            batch = fut.result()
            self.report.bytes_read += batch.nbytes
            try:
                out = ingest(self.gs, batch, sf.path)
            except SourceError as e:
                sf.errors.append(str(e))
            else:
                sf.written += out.written
                sf.refs.update(out.refs)
                self.report.tensors_written += out.written
                self.report.tensors_present += out.present
                self.report.bytes_written += out.nbytes
                self.unsynced += out.nbytes
        self.display.advance(self.report, part.nbytes)
        if sf.done:
            self._finish_file(sf)

    def _finish_file(self, sf: SourceFile) -> None:
        if sf.errors:
            self._fail(sf, sf.errors)
            return
        self.report.files_converted += 1
        if sf.written == 0:
            self.report.files_present += 1
        self.display.file(sf.path, "converted" if sf.written else "present")
        if self.delete_source:
            self.to_verify.append(sf)
            if self.unsynced >= self.sync_bytes:
                self.commit()

    def _fail(self, sf: SourceFile, errors: list[str]) -> None:
        self.report.files_failed += 1
        for line in errors:
            self.report.errors.append((sf.path, line))
            self.display.error(line)
        self.display.file(sf.path, "failed")

    # -- commit and delete ---------------------------------------------------------

    def commit(self) -> None:
        """Make what was written durable; then verify and delete the converted sources."""
        if not (self.unsynced or self.to_verify):
            return
        self.gs.sync()
        self.unsynced = 0
        for sf in self.to_verify:
            self._submit("verify", sf, None, worker.checksums, sf.path, sf.format, self.dtype)
        self.to_verify = []

    def _verify_done(self, sf: SourceFile, fut: Future, exc: BaseException | None) -> None:
        if exc is None:
            stat, sums = fut.result()
            problem = self._compare(sf, sums)
            if problem is None and _stat(sf.path) != stat:
                problem = "it changed after it was verified"
            if problem is None:
                try:
                    os.unlink(sf.path)
                except OSError as e:
                    self.report.files_converted -= 1
                    self._fail(sf, [f"{sf.path}: verified, but it cannot be deleted: {one_line(e)}"])
                    return
                else:
                    self.report.sources_deleted += 1
                    self.display.file(sf.path, "deleted")
                    return
            line = f"{sf.path}: verification failed, not deleted: {problem}"
        else:
            line = _message(sf.path, exc)
            if "not deleted" not in line:
                line += " (not deleted)"
        self.report.files_converted -= 1
        self._fail(sf, [line])

    def _compare(self, sf: SourceFile, sums: dict) -> str | None:
        """None when the source, read again, is exactly what the store holds."""
        if set(sums) != set(sf.refs):
            return "its tensors are not the ones converted (the file changed since it was read)"
        for key, (dtype, shape, checksum) in sums.items():
            if key not in self.gs:
                return f"{key} is not in the store"
            if not matches(self.gs.entry(key), dtype, shape, checksum):
                return (f"{key} reads differently from what the store holds "
                        "(the file changed since it was read)")
        return None

    # -- lifetime ----------------------------------------------------------------

    def close(self, abort: bool = False) -> None:
        if abort:  # readers ignore SIGINT/SIGTERM; do not wait for their current part
            for p in list((getattr(self.executor, "_processes", None) or {}).values()):
                p.kill()
        self.executor.shutdown(wait=not abort, cancel_futures=True)
        self.spool.close()

    def __enter__(self) -> "Converter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(abort=exc_type is not None)


def _stat(path: str):
    try:
        return worker.stat_of(path)
    except FileNotFoundError:
        return None


def _message(path: str, exc: BaseException) -> str:
    if isinstance(exc, SourceError):
        return str(exc)
    return f"{path}: {type(exc).__name__}: {one_line(exc)}"


def convert(sources: Iterable[str | os.PathLike], dest, *, jobs: int = DEFAULT_JOBS,
            dtype: str | None = None, delete_source: bool = False,
            display: Display | None = None) -> Report:
    """Convert source files and directories into the store at ``dest``.

    Re-running is safe: tensors already stored with the same checksum are
    skipped, and a key stored with other data is reported, never overwritten.
    Errors about single files are in the returned report; a store that
    cannot be opened raises.  With ``jobs > 0`` the readers are new
    processes, so a script calling this needs the usual
    ``if __name__ == "__main__":`` guard of multiprocessing.
    """
    refuse_if_rerun()
    files = source.discover(list(sources))
    display = display or Display()
    report = Report()
    with open_store(dest) as gs, GracefulStop() as stop, \
            Converter(gs, jobs=jobs, dtype=dtype, delete_source=delete_source, display=display,
                      report=report, preload=readers_need(files)) as conv:
        for f in files:
            conv.add(f)
        conv.run(stop)
    report.elapsed = time.monotonic() - report.started
    display.close(report)
    return report
