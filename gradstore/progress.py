"""Progress bars that appear only when a person is watching a long job, and byte counts for people."""
from __future__ import annotations

import sys
from collections.abc import Iterable


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
