"""The two jobs a reader process does: copy a part out, and checksum a file again."""
from __future__ import annotations

import os
import select
import signal
import threading
import time

from . import source, transfer
from .transfer import Batch, Stat, stat_of


def init(writer_pid: int | None = None) -> None:
    """Leave SIGINT and SIGTERM to the writer, which stops the pool when it is done.

    A reader also dies with the writer, so a SIGKILL of the converter leaves
    no orphan: on Linux the kernel kills a reader whose parent dies, and a
    reader forked by a forkserver (whose parent is the server, which itself
    waits for its readers) watches the writer's pid.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if writer_pid is not None and writer_pid != os.getppid():
        threading.Thread(target=_die_with, args=(writer_pid,), name="watch-writer",
                         daemon=True).start()


def _die_with(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])   # readable when the process has exited
    else:
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
    os._exit(1)


def read_part(part: source.Part, dtype: str | None, spool: str) -> Batch:
    """The tensors of ``part``, checksummed, where the writer can store them from."""
    try:
        stat = stat_of(part.path)
    except OSError:
        stat = None   # the format's reader says what is wrong
    with source.module(part.format).read(part, dtype) as items:
        if stat is None:
            return transfer.pack(items, spool)
        return transfer.pack(items, spool, part.path, stat)


def checksums(path: str, fmt: str, dtype: str | None) -> tuple[Stat, dict[str, tuple[str, tuple, int]]]:
    """Read a source file again: its stat, and {key: (dtype, shape, checksum)}.

    Used before a source is deleted, so that what is deleted is what the
    store holds, even if the file changed after it was first read.
    """
    before = stat_of(path)
    mod = source.module(fmt)
    out: dict[str, tuple[str, tuple, int]] = {}
    for part in mod.plan(path, dtype):
        with mod.read(part, dtype) as items:
            for it in items:
                out[it.key] = (it.dtype, it.shape, transfer.checksum(it.array()))
    if stat_of(path) != before:
        raise source.SourceError(f"{path}: changed while it was being verified; not deleted")
    return before, out
