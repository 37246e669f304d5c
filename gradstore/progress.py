"""Progress bars that appear only when a person is watching a long job."""
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
