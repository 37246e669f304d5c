"""The console entry points, kept free of heavy imports.

A command spends its first second importing numpy, torch and the rest; a
Ctrl-C then must end it like a Ctrl-C later does: one line, status 130.
This module imports nothing heavy itself.  SIGINT stays blocked while the
command's modules load (a KeyboardInterrupt inside numpy's C start-up
surfaces as an unrelated ImportError), and a Ctrl-C that came meanwhile
ends the command before it starts.  The command keeps SIGINT blocked and
takes it from there (progress.exit_on_interrupt).
"""
from __future__ import annotations

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


def gradstore() -> None:
    """``gradstore``."""
    sys.exit(_run("gradstore", "gradstore.cli", "main"))


def gradstore_convert() -> None:
    """``gradstore-convert``."""
    sys.exit(_run("gradstore-convert", "gradstore.convert.cli", "main"))
