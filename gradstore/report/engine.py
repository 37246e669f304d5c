"""Running tasks: in this process, on a pool of worker processes, or on a Dask cluster.

Whatever runs them, tasks are handed out a few at a time (about two per
worker), never all at once, and their results come back to this process in
the order they finish.  A task is a chunk of keys bounded in bytes and in
count (``chunks``), so memory stays bounded by the window, not the store.

Leaving the ``with`` block early (Ctrl-C, an error) stops at once: nothing
more is handed out, the pool's workers are killed rather than waited for,
and the Dask futures are cancelled.
"""
from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool

from ..errors import GradstoreError

TASK_BYTES = 64 << 20      # raw bytes per task, at most
TASK_KEYS = 256            # keys per task, at most
MIN_TASK_BYTES = 1 << 20
GUIDE = 4                  # chunks per worker share of what is left (see chunks)
PER_WORKER = 2             # tasks in flight per worker
WORKER_MODULE = "gradstore.report.measure"   # what workers run: imported before they start
WARM_MODULE = "gradstore.report.warm"        # loads the codecs' kernels in the server they fork from
WARM_KEYS = 4096                             # the dtypes of this many keys are warmed up


def chunks(items: Iterable[tuple[str, int, int]], total: int, workers: int,
           max_bytes: int = TASK_BYTES, max_keys: int = TASK_KEYS
           ) -> Iterator[tuple[list[str], list[int], int]]:
    """(keys, srcs, bytes) chunks of (key, src, nbytes) items, in order.

    Never more than ``max_bytes`` or ``max_keys``, and smaller as the end
    nears (guided scheduling): a chunk takes at most 1/GUIDE of each
    worker's share of the bytes still to come, so the last tasks are small
    and no worker waits long at the end for another's last big one.
    """
    left = total
    keys: list[str] = []
    srcs: list[int] = []
    nbytes = 0
    limit = _limit(left, workers, max_bytes)
    for key, src, n in items:
        if keys and (nbytes + n > limit or len(keys) >= max_keys):
            yield keys, srcs, nbytes
            left -= nbytes
            limit = _limit(left, workers, max_bytes)
            keys, srcs, nbytes = [], [], 0
        keys.append(key)
        srcs.append(src)
        nbytes += n
    if keys:
        yield keys, srcs, nbytes


def _limit(left: int, workers: int, max_bytes: int) -> int:
    return max(MIN_TASK_BYTES, min(max_bytes, left // (max(1, workers) * GUIDE)))


class Meter:
    """A tqdm bar of keys and bytes with rate and ETA; ``enabled=None``: only on a terminal."""

    def __init__(self, desc: str, keys: int, nbytes: int, done_keys: int = 0, done_bytes: int = 0,
                 enabled: bool | None = None):
        self.keys, self.done_keys = keys, done_keys
        self.bar = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=nbytes, initial=done_bytes, desc=desc, unit="B", unit_scale=True,
                        unit_divisor=1024, dynamic_ncols=True, file=sys.stderr)
        self._postfix(refresh=True)

    def _postfix(self, refresh: bool = False) -> None:
        self.bar.set_postfix_str(f"{self.done_keys}/{self.keys} keys", refresh=refresh)

    def advance(self, keys: int, nbytes: int) -> None:
        self.done_keys += keys
        if self.bar is not None:
            self._postfix()
            self.bar.update(nbytes)

    def __enter__(self) -> "Meter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def start_early(store, keys: list[str], specs, jobs: int, remote: bool) -> None:
    """For ``jobs`` worker processes on this machine: start the server they fork from
    now, importing the codecs' modules (found without importing them here), so that
    its imports overlap with this process's own and with its planning.  It then
    loads the codecs' kernels for the dtypes of the first keys (``warm``), which
    every worker forked from it inherits.  When those keys hold bfloat16 tensors,
    it imports ml_dtypes too (half a second, which a float32 report would wait
    for in vain)."""
    if jobs <= 1 or remote:
        return
    from ..codecs.registry import module_of
    from ..convert.readers import start_server
    from .warm import WARM_ENV, plan
    dtypes = list(dict.fromkeys(store.source_entry(k).dtype for k in keys[:WARM_KEYS]))
    names = [s if isinstance(s, str) else s.spec for s in specs]
    modules = (m for m in (module_of(s) if isinstance(s, str) else type(s).__module__
                           for s in specs) if m)
    before = os.environ.get(WARM_ENV)
    os.environ[WARM_ENV] = plan(names, dtypes)   # read by the server as it imports .warm
    try:
        start_server((WORKER_MODULE, *dict.fromkeys(modules),
                      *(("ml_dtypes",) if "bfloat16" in dtypes else ()), WARM_MODULE))
    finally:
        if before is None:
            os.environ.pop(WARM_ENV, None)
        else:
            os.environ[WARM_ENV] = before


class Runner:
    """Runs ``fn(source, *args)`` for each argument tuple; see the module docstring.

    ``jobs`` > 1: this process and ``jobs`` - 1 worker processes, which get
    the store's path; ``client`` (a distributed.Client): its workers, which
    get the path too (it must be visible to them: a shared filesystem);
    else this process alone, with the open store itself.

    With worker processes, this process works too: it does a task whenever
    no finished one is waiting to be collected.  A worker's server needs a
    second or so to import and load the codecs' kernels (engine.start_early);
    this process starts on the first task at once, and the workers join as
    they come, so a run of ``-j 2`` takes two cores from its start, and the
    results' bookkeeping here shares this process's core rather than a third
    process's turn on two.  A run of one task starts no worker.
    """

    def __init__(self, store, jobs: int = 1, client=None, preload: tuple[str, ...] = ()):
        self.store = store
        self.jobs = jobs
        self.client = client
        self.preload = preload
        self.path = os.path.abspath(os.fspath(store.path))
        self._executor = None
        self._started: threading.Event | None = None   # set once the workers are started
        self._start_error: BaseException | None = None

    def __enter__(self) -> "Runner":
        return self

    def _start_workers(self, then: Callable[[], None]) -> None:
        """Start the ``jobs`` - 1 workers in a thread, which then calls ``then`` (hands
        them their first tasks): connecting to their server waits until it has
        imported its preloads, which this process does not wait for.  A Ctrl-C
        cannot interrupt the thread: a worker interrupted half-started would be no
        one's to kill, and would print a traceback once this process is gone."""
        from ..convert.readers import make_executor
        self._executor = make_executor(self.jobs - 1, (WORKER_MODULE, *self.preload))
        launch = getattr(self._executor, "_launch_processes", None)
        started = self._started = threading.Event()

        def start() -> None:
            try:
                if launch is not None:
                    launch()
                then()
            except BaseException as exc:   # raised again in imap, in this process
                self._start_error = exc
            finally:
                started.set()

        threading.Thread(target=start, name="start-workers", daemon=True).start()

    def __exit__(self, exc_type, exc, tb) -> None:
        ex, self._executor = self._executor, None
        if ex is None:
            return
        while not self._started.wait(0.05):   # every worker started is then ours to stop
            pass
        if exc_type is None:
            from ..convert.readers import shut_down
            shut_down(ex)
        else:
            from ..convert.readers import discard_broken
            discard_broken(ex)   # kill, don't wait: a Ctrl-C ends the command within a second

    @property
    def workers(self) -> int:
        if self.client is not None:
            from .dask import worker_count
            return worker_count(self.client)
        return max(1, self.jobs)

    def imap(self, fn: Callable, argsets: Iterable[tuple]) -> Iterator[tuple[tuple, object]]:
        """(args, fn's result) as tasks finish, at most about two per worker in flight."""
        if self.client is not None:
            from .dask import imap
            yield from imap(self.client, fn, self.path, argsets, PER_WORKER * self.workers)
        elif self.jobs <= 1:
            for args in argsets:
                yield args, run_here(fn, self.store, args)
        else:
            yield from self._pool_imap(fn, argsets)

    def _pool_imap(self, fn, argsets):
        tasks = iter(argsets)
        first = next(tasks, None)
        second = next(tasks, None) if first is not None else None
        if second is None:   # one task or none: no worker to start for it
            if first is not None:
                yield first, run_here(fn, self.store, first)
            return
        out = Handout(itertools.chain((first, second), tasks), PER_WORKER * (self.jobs - 1),
                      lambda args: self._executor.submit(fn, self.path, *args))
        self._start_workers(out.fill)
        while True:
            if self._started.is_set():
                if self._start_error is not None:
                    raise self._start_error
                out.fill()
            done = out.finished()
            if not done:   # nothing to collect: a task for this process, if any is left
                args = out.take()
                if args is not None:
                    yield args, run_here(fn, self.store, args)
                    continue
                inflight = out.in_flight()
                if not inflight:
                    return
                wait(inflight, timeout=0.5, return_when=FIRST_COMPLETED)
                done = out.finished()
            for fut, args in done:
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    raise GradstoreError("a worker process died (out of memory, or killed); "
                                         "what was done is kept: run the same command again") from None
                yield args, result


def run_here(fn: Callable, store, args: tuple):
    """fn(store, *args) in this process.  A Ctrl-C that lands while numba compiles or
    loads a kernel (Python code run from inside the dispatcher's call, or from
    llvmlite's callbacks) comes out of the call as another error (a SystemError
    caused by the KeyboardInterrupt; a RuntimeError of a compile cut short, the
    KeyboardInterrupt swallowed in a callback): it is raised as the
    KeyboardInterrupt it is, so that the command stops as on any other Ctrl-C."""
    try:
        return fn(store, *args)
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__
        while cause is not None and not isinstance(cause, KeyboardInterrupt):
            cause = cause.__cause__ or cause.__context__
        from ..progress import interrupt_requested
        if cause is None and not interrupt_requested():
            raise
        raise KeyboardInterrupt from None


class Handout:
    """The tasks of a pool run, taken by this process one at a time and handed to
    the workers up to ``window`` in flight, from this process's thread and from
    the thread that starts the workers (the moment they are up, not once this
    process is done with its task): under a lock."""

    def __init__(self, tasks: Iterator[tuple], window: int, submit: Callable):
        self.tasks = tasks
        self.window = window
        self.submit = submit
        self.inflight: dict = {}       # future -> its args, in the order handed out
        self.lock = threading.Lock()

    def take(self) -> tuple | None:
        with self.lock:
            return next(self.tasks, None)

    def fill(self) -> None:
        with self.lock:
            while len(self.inflight) < self.window:
                args = next(self.tasks, None)
                if args is None:
                    return
                self.inflight[self.submit(args)] = args

    def in_flight(self) -> list:
        with self.lock:
            return list(self.inflight)

    def finished(self) -> list[tuple]:
        """(future, args) of the tasks done, in the order handed out; no longer in flight."""
        with self.lock:
            done = [(f, a) for f, a in self.inflight.items() if f.done()]
            for f, _ in done:
                del self.inflight[f]
            return done
