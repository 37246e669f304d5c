"""One line on stderr when gradstore's numba kernels are really compiled.

The kernels are compiled on first use and cached by numba (``cache=True``),
so a later process only loads them, in well under a second.  The first
compile takes tens of seconds, which without a word looks like a hang (a
progress bar frozen at 0%).  numba announces each compilation, not a load
from its cache, as a "numba:compile" event: the first one of a gradstore
kernel prints the line, once per process.
"""
from __future__ import annotations

import sys
import threading

from numba.core import event

MESSAGE = ("gradstore: compiling the codec kernels for this machine (once: about a minute at most, "
           "cached for later runs)")


class CompileNotice(event.Listener):
    """Prints MESSAGE at the first compilation of a function of a gradstore module."""

    def __init__(self) -> None:
        self.shown = False
        self._lock = threading.Lock()

    def on_start(self, ev: event.Event) -> None:
        if self.shown:
            return
        dispatcher = (ev.data or {}).get("dispatcher")
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if not module.startswith("gradstore."):
            return
        with self._lock:
            if not self.shown:
                self.shown = True
                print(MESSAGE, file=sys.stderr, flush=True)

    def on_end(self, ev: event.Event) -> None:
        pass


NOTICE = CompileNotice()
event.register("numba:compile", NOTICE)
