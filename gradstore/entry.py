"""The console entry points, kept free of heavy imports.

A command spends its first second importing numpy, torch and the rest; a
Ctrl-C then must end it like a Ctrl-C later does: one line, status 130.
This module imports nothing heavy itself.  SIGINT stays blocked while the
command's modules load (a KeyboardInterrupt inside numpy's C start-up
surfaces as an unrelated ImportError), and a Ctrl-C that came meanwhile
ends the command before it starts.  The command keeps SIGINT blocked and
takes it from there (progress.exit_on_interrupt).

A command leaves without the interpreter's last garbage collection, which
after numba has loaded its kernels takes a third of a second here, tearing
down compiler objects one by one (``_leave``).
"""
from __future__ import annotations

import gc
import importlib
import signal
import sys

EXIT_INTERRUPTED = 130


def _run(prog: str, module: str, name: str) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    main = getattr(importlib.import_module(module), name)
    if signal.SIGINT in signal.sigpending():
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return main()


def _leave(status: int) -> None:
    """Exit with ``status``.  The objects alive now are frozen out of the garbage
    collector, so the interpreter's shutdown does not collect them: the
    operating system takes the memory back at once.  Files and streams are
    closed and flushed as ever (the command has closed its stores; atexit
    handlers and the standard streams' flush still run)."""
    gc.freeze()
    sys.exit(status)


def gradstore() -> None:
    """``gradstore``."""
    _leave(_run("gradstore", "gradstore.cli", "main"))


def gradstore_convert() -> None:
    """``gradstore-convert``."""
    _leave(_run("gradstore-convert", "gradstore.convert.cli", "main"))
