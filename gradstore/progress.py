"""What a person at a terminal sees of a long job: progress bars that appear only when
someone is watching, byte counts for people, and a Ctrl-C that ends a command with one
line (``exit_on_interrupt``)."""
from __future__ import annotations

import _thread
import signal
import sys
import threading
from collections.abc import Callable, Iterable


def bar(items: Iterable, desc: str, enabled: bool | None = None, **kwargs) -> Iterable:
    """``items`` wrapped in a tqdm bar; ``enabled=None`` means: on a terminal, for long jobs."""
    if enabled is None:
        try:
            n = len(items)  # type: ignore[arg-type]
        except TypeError:
            n = None
        enabled = sys.stderr.isatty() and (n is None or n > 20)
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    kwargs.setdefault("unit", "key")
    return tqdm(items, desc=desc, **kwargs)


def human_bytes(n: float) -> str:
    """1536 -> '1.50 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n}"


EXIT_INTERRUPTED = 130
_WAKE = getattr(signal, "SIGURG", None)   # ignored by default, so harmless wherever it lands
_forwarding: "_Forwarder | None" = None
_requested = threading.Event()            # a Ctrl-C reached the command now running


def interrupt_requested() -> bool:
    """True once a Ctrl-C has reached the command running (under exit_on_interrupt).

    A KeyboardInterrupt raised inside a C library's call back into Python
    (numba compiling a kernel: llvmlite's callbacks, the dispatcher) may be
    swallowed there, or come out as another error; this says it was a Ctrl-C."""
    return _requested.is_set()


def _quiet_unraisable(unraisable) -> None:
    """A Ctrl-C that landed in a callback Python cannot raise from is no error to show."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


class _Forwarder:
    """Keeps SIGINT from the processes a command starts, and hands it to the main thread.

    A terminal's Ctrl-C goes to the whole process group: reader processes, a
    forkserver still importing torch, the workers of a pool.  Each would print
    a traceback of its own.  So SIGINT is blocked in this process, and a
    blocked signal stays blocked in every thread and process started after,
    across fork and exec.  A thread takes it with sigwait and raises it in the
    main thread as if it had arrived there (the handler in place runs:
    KeyboardInterrupt, or GracefulStop's request), then wakes the main thread
    from any blocking call with a signal that only does that.  The processes
    started stop with this one, as they always do.
    """

    def __init__(self) -> None:
        self.active = True
        # multiprocessing blocks SIGINT while it starts its resource tracker, then
        # unblocks it, which would undo ours: here it can leave the mask alone.
        from multiprocessing import resource_tracker
        if hasattr(resource_tracker, "_HAVE_SIGMASK"):
            resource_tracker._HAVE_SIGMASK = False
        signal.signal(_WAKE, lambda signum, frame: None)   # its only job: interrupt a wait
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        threading.Thread(target=self._run, name="sigint", daemon=True).start()

    def _run(self) -> None:
        main = threading.main_thread().ident
        while True:
            signal.sigwait({signal.SIGINT})
            if self.active:
                _requested.set()
                _thread.interrupt_main(signal.SIGINT)
                signal.pthread_kill(main, _WAKE)

    def stop(self) -> None:
        """Later Ctrl-Cs do nothing: the command is leaving already."""
        self.active = False


def exit_on_interrupt(prog: str, run: Callable[[], int], *, leaving: bool = True) -> int:
    """``run()``; a Ctrl-C at any moment ends it with one line on stderr and status 130.

    For command lines: while it runs, SIGINT is blocked in this process and
    the ones it starts (see _Forwarder).  ``leaving``: the process exits
    afterwards, so a late Ctrl-C is ignored rather than raised in its
    teardown; otherwise (a call from Python) SIGINT is as it was before.
    """
    global _forwarding
    outermost = _forwarding is None
    hook = sys.unraisablehook
    if outermost and _WAKE is not None and threading.current_thread() is threading.main_thread():
        _requested.clear()
        sys.unraisablehook = _quiet_unraisable
        _forwarding = _Forwarder()
    try:
        return run()
    except KeyboardInterrupt:
        if _forwarding is not None:
            _forwarding.stop()
        try:
            print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        except KeyboardInterrupt:   # one forwarded just before stop()
            pass
        return EXIT_INTERRUPTED
    finally:
        if outermost and _forwarding is not None:
            _forwarding.stop()
            if leaving:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            sys.unraisablehook = hook
            _forwarding = None
