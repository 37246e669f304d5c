"""Size reports: every selected key through every codec, side by side, at any scale.

The entry point is :func:`run`; ``Store.sizes`` and ``gradstore report``
call it.  A report measures each key once (``measure``: a KeyResult per
codec and one for the raw baseline), appends the results to a results file
as they come (``results``: a stopped report resumes where it stopped, and a
Ctrl-C loses nothing received), and adds them up per group as they arrive
(``groups``: rows identical however the report ran).  ``engine`` runs the
tasks in this process, on ``jobs`` worker processes or on a Dask cluster
(``dask``), a few at a time, with a progress bar of keys and bytes.
``encoding`` runs ``Store.encode`` on the same engine.

    report = run("run.gs", ["eg:k=0,scale=1e6,sign=bit"], group_by=("step",), jobs=8)
    report.rows          # one dict per (group, codec), raw first: the CSV columns
    report.results()     # the KeyResults, streamed from the results file
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from .groups import GROUP_FIELDS, Groups, check_group_by, group_of
from .result import KeyResult
from .results import ResultsFile, default_path

__all__ = ["run", "Report", "KeyResult", "GROUP_FIELDS", "Interrupted", "group_of"]


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C stopped the report; what was done is in the results file."""

    def __init__(self, done: int, total: int, resumable: bool):
        super().__init__()
        self.done, self.total, self.resumable = done, total, resumable

    def __str__(self) -> str:
        tail = ", resume with the same command" if self.resumable else ""
        return f"interrupted; {self.done} of {self.total} keys done{tail}"


@dataclass
class Report:
    """What a report found: rows per group and codec, and the per-key results behind them."""

    rows: list[dict]
    specs: list[str]
    totals: list[dict]            # one row per codec over every key (raw first)
    keys: int                     # keys selected
    measured: int                 # keys measured by this run (the others were resumed)
    nbytes: int                   # raw bytes of the keys selected
    results_path: Path | None     # None: kept in a temporary file only
    _file: ResultsFile = field(repr=False, default=None)
    _keys: list[str] = field(repr=False, default_factory=list)

    def results(self) -> Iterator[KeyResult]:
        """The KeyResult of every key and codec (raw included), streamed from the results file."""
        yield from self._file.read(self._file.offsets(self._keys, ["raw"] + self.specs))

    def close(self) -> None:
        """Let go of the results file (a temporary one is deleted)."""
        if self._file.temporary:
            self._file.remove()
        else:
            self._file.close()


def _warn(line: str) -> None:
    print(f"gradstore: warning: {line}", file=sys.stderr, flush=True)


def open_results(store, results, fresh: bool, warn=_warn) -> ResultsFile:
    """The results file for ``store``: ``results`` a path, None (next to the store) or
    False (a temporary file: no resume).  One warning and a temporary file if it cannot
    be written."""
    if results is False:
        return ResultsFile.temporary()
    path = default_path(store.path) if results in (None, True) else Path(results)
    try:
        return ResultsFile.open(path, fresh)
    except OSError as exc:
        reason = exc.strerror if exc.strerror and exc.filename else str(exc)
        warn(f"results not kept ({path}: {reason}); this report cannot resume (see --results)")
        return ResultsFile.temporary()


def run(store, codecs=(), keys: list[str] | None = None, group_by=(), *, jobs: int = 1,
        dask: str | None = None, scheduler_file: str | None = None, client=None,
        results: str | os.PathLike | bool | None = None, fresh: bool = False,
        progress: bool | None = None, **filters) -> Report:
    """Measure ``keys`` (default: all, or those ``filters`` select) with each codec.

    ``store``: an open Store or a path.  ``jobs`` worker processes, or the
    Dask cluster at ``dask`` / described by ``scheduler_file`` (or an open
    distributed ``client``).  ``results``: where per-key results are kept
    (None: ``<store>.results``; False: a temporary file); ``fresh`` ignores
    and replaces what is there.  ``progress``: None shows a bar on a terminal.
    A Ctrl-C raises :class:`Interrupted` (a KeyboardInterrupt) once the
    workers are stopped.
    """
    group_by = check_group_by(group_by)
    if isinstance(codecs, str):
        codecs = [codecs]
    from .engine import Meter, Runner, chunks, start_early
    with ExitStack() as stack:
        if isinstance(store, (str, os.PathLike)):
            from ..store import open_store
            store = stack.enter_context(open_store(store))
        # with the keys stored as encoded variants only (gradstore.encoded)
        keys = store.keys(**filters) + store.encoded_keys(**filters) if keys is None else list(keys)
        # the workers' server imports while this process imports the codecs and plans
        start_early(store, keys, codecs, jobs,
                    client is not None or dask is not None or scheduler_file is not None)
        from ..variants import codec_of
        from .measure import measure_task
        codec_objs = [codec_of(c) for c in codecs]
        specs = list(dict.fromkeys(c.spec for c in codec_objs if c.spec != "raw"))
        all_specs = ["raw"] + specs
        rf = open_results(store, results, fresh)
        stack.callback(lambda: rf.close() if rf.temporary is False else None)
        try:
            groups = Groups(group_by, specs)
            pending: list[tuple[str, int, int]] = []
            done_keys: list[str] = []
            done_bytes = total_bytes = 0
            for key in keys:
                e = store.source_entry(key)
                groups.declare(key)
                total_bytes += e.payload_len
                if rf.done(key, all_specs, e.checksum):
                    done_keys.append(key)
                    done_bytes += e.payload_len
                else:
                    pending.append((key, e.checksum, e.payload_len))
            for r in rf.read(rf.offsets(done_keys, all_specs)):
                groups.add(r)
            del done_keys
            if client is None and (dask is not None or scheduler_file is not None):
                from .dask import connect
                client = stack.enter_context(connect(dask, scheduler_file))
            meter = stack.enter_context(Meter("report", len(keys), total_bytes,
                                              len(keys) - len(pending), done_bytes, progress))
            # nothing left to measure: no worker processes to start (and stop) for it
            runner = stack.enter_context(Runner(store, jobs if pending else 1, client))
            tasks = ((specs, ks, srcs) for ks, srcs, _ in
                     chunks(pending, total_bytes - done_bytes, runner.workers))
            try:
                for (_, ks, _), out in runner.imap(measure_task, tasks):
                    rf.append(out)
                    for r in out:
                        groups.add(r)
                    meter.advance(len(ks), sum(r.raw_bytes for r in out if r.codec == "raw"))
            except KeyboardInterrupt:
                raise Interrupted(meter.done_keys, len(keys), not rf.temporary) from None
            return Report(groups.rows(), specs, groups.totals(), len(keys), len(pending), total_bytes,
                          None if rf.temporary else rf.path, rf, keys)
        except BaseException:
            if rf.temporary:
                rf.remove()
            raise
