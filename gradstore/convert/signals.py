"""A clean stop on SIGINT or SIGTERM: the first asks, the second insists."""
from __future__ import annotations

import signal
import threading


class GracefulStop:
    """While active, the first SIGINT/SIGTERM sets ``requested``; a second raises KeyboardInterrupt.

    Outside the main thread signals cannot be caught; the object then only
    holds the flag, which callers may set themselves.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
