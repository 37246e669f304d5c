"""Starting the reader processes: a forkserver that imports what readers need once.

``jobs=0`` reads in the writer's own process instead (tests, debugging).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Iterable

from ..errors import GradstoreError
from . import source, worker

# A reader that finds itself running the main script again exits with this
# status, so the writer can tell the user what is wrong (see unguarded_main).
EXIT_RERAN_MAIN = 87


class MainGuardError(GradstoreError):
    """convert() was called by a script without an ``if __name__ == "__main__":`` guard."""

    def __init__(self) -> None:
        script = getattr(sys.modules.get("__main__"), "__file__", None) or "the main script"
        super().__init__(
            f"{script}: the converter's reader processes run this script again when they start, "
            "and it calls convert() again at import; put that call under "
            "'if __name__ == \"__main__\":' (or pass jobs=0 to read in this process)")


def refuse_if_rerun() -> None:
    """Called first by convert() and watch(): a process that is still being started
    by multiprocessing is a reader re-running an unguarded main script.  It leaves
    at once, with a status its writer recognizes, before it opens anything."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        sys.stdout.flush()
        os._exit(EXIT_RERAN_MAIN)


def reran_main(executor: Executor) -> bool:
    """True when a reader of ``executor`` left through refuse_if_rerun."""
    return any(p.exitcode == EXIT_RERAN_MAIN
               for p in list((getattr(executor, "_processes", None) or {}).values()))


class InlineExecutor(Executor):
    """Runs each task at submit time, in this process: ``jobs=0``."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:
            fut.set_exception(exc)
        return fut


def _start_method() -> str:
    """forkserver: readers start clean (no threads or state of the writer inherited), fast.

    The server imports what readers need (torch) once and forks them ready.
    Like spawn, it imports the main script in each reader; when that script
    is not a file (python - < script), fork is the only way.
    """
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is not None and not os.path.isfile(main_file):
        return "fork"
    if "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


def start_server(preload: tuple[str, ...] = ()):
    """The multiprocessing context readers start from; with forkserver, its server is
    started now, importing ``preload`` while this process goes on (opening the store,
    planning).  Once running, it keeps the preload it was started with."""
    refuse_if_rerun()
    method = _start_method()
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        from multiprocessing import forkserver
        ctx.set_forkserver_preload([worker.__name__, *preload])
        forkserver.ensure_running()
    return ctx


def make_executor(jobs: int, preload: tuple[str, ...] = ()) -> Executor:
    """``jobs`` reader processes (none: read in this process), with ``preload`` imported early."""
    refuse_if_rerun()
    if jobs <= 0:
        return InlineExecutor()
    ctx = start_server(preload)
    return ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=worker.init,
                               initargs=(os.getpid(),))


def discard_broken(executor: Executor) -> None:
    """Let go of a pool one of whose readers died, without waiting on the others.

    Readers ignore SIGTERM (worker.init), so the terminate() that
    concurrent.futures sends the survivors of a broken pool would leave its
    manager thread joining them forever, and the writer could never exit.
    They hold nothing the writer needs (their tasks have failed already), so
    they get SIGKILL.
    """
    for proc in list((getattr(executor, "_processes", None) or {}).values()):
        try:
            proc.kill()
        except (OSError, ValueError):   # gone already, or its handle closed
            pass
    executor.shutdown(wait=False)


def shut_down(executor: Executor) -> None:
    """Wait for the readers to finish their tasks and leave; then kill any left idle.

    A pool whose readers were started before its first task (Runner._launch)
    but which never got one has no manager thread: shutdown() would return
    without telling them to leave, and they would wait for work forever,
    and this process would wait for them at exit (multiprocessing joins its
    children). Such a reader has no task, so SIGKILL loses nothing.
    """
    procs = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=True)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()


def readers_need(files: Iterable[str | os.PathLike] | None) -> tuple[str, ...]:
    """Modules worth importing in readers before the first file (None: any file may come)."""
    import importlib.util
    wanted = source.MODULES if files is None else {source.format_of(f) for f in files}
    libs = [source.module(name).LIBRARY for name in source.MODULES if name in wanted]
    return tuple(lib for lib in libs if importlib.util.find_spec(lib))
