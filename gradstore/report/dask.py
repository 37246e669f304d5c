"""Reports on an existing Dask cluster (``--dask ADDRESS`` or ``--scheduler-file FILE``).

The tasks are the same as with ``-j``: each opens the store read-only by
its path, so the store must be on a filesystem the Dask workers see at the
same path.  dask[distributed] is the optional extra ``dask``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from ..errors import GradstoreError


class DaskUnavailableError(GradstoreError, ValueError):
    """--dask was asked for, but dask.distributed is not installed."""


def connect(address: str | None = None, scheduler_file: str | None = None):
    """A distributed.Client of the scheduler at ``address`` or described by ``scheduler_file``."""
    try:
        from distributed import Client
    except ImportError:
        raise DaskUnavailableError("--dask needs dask.distributed: pip install 'gradstore[dask]'") from None
    if scheduler_file is not None and not os.path.isfile(scheduler_file):
        raise GradstoreError(f"{scheduler_file}: no such scheduler file (is the Dask cluster up?)")
    try:
        if scheduler_file is not None:
            return Client(scheduler_file=scheduler_file, timeout="20s")
        return Client(address, timeout="20s")
    except (OSError, TimeoutError, ValueError) as exc:
        where = scheduler_file or address
        raise GradstoreError(f"cannot reach the Dask scheduler {where}: {exc}") from None


def worker_count(client) -> int:
    try:
        n = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
    except Exception:
        n = 0
    return max(1, n)


def imap(client, fn: Callable, path: str, argsets: Iterable[tuple], window: int
         ) -> Iterator[tuple[tuple, object]]:
    """(args, result) as tasks finish on the cluster, ``window`` at most in flight.

    Leaving early (Ctrl-C, an error) cancels what is still in flight.
    """
    from distributed import as_completed
    it = iter(argsets)
    inflight: dict = {}

    def submit() -> bool:
        args = next(it, None)
        if args is None:
            return False
        fut = client.submit(fn, path, *args, pure=False)
        inflight[fut.key] = args
        ac.add(fut)
        return True

    ac = as_completed()
    try:
        while len(inflight) < window and submit():
            pass
        for fut in ac:
            args = inflight.pop(fut.key)
            result = fut.result()
            fut.release()
            submit()
            yield args, result
    finally:
        if inflight:
            try:
                client.cancel(list(ac.futures), force=True)
            except Exception:
                pass
