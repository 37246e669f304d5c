"""The work a report (or a parallel encode) does on one key, in whichever process runs it.

Task functions take ``source``: the open Store itself when they run in the
main process, or the store's path in a worker process or on a Dask worker,
which opens it read-only once (see ``worker_store``) and reads through its
memory maps.  One tensor is in hand at a time, and its pages are let go
after use, so a worker's memory does not grow with the store it reads.
"""
from __future__ import annotations

import mmap
import os
import threading

from .. import format as fmt
from ..encoded import NO_TENSOR
from ..errors import NotEncodableError
from ..variants import codec_of, record_bytes, trial, variant_meta
from .result import KeyResult

# A page fault maps the cached pages around it: the kernel's fault-around (64 KiB), or
# the whole of a large folio, naturally aligned and at most a PMD's size (2 MiB on 4 KiB pages)
AROUND = mmap.PAGESIZE * (mmap.PAGESIZE // 8)
_local = threading.local()   # Dask may run several tasks in threads of one process


def worker_store(source):
    """``source`` if it is an open store, else this process's read-only store at that path."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    stores = getattr(_local, "stores", None)
    if stores is None:
        stores = _local.stores = {}
    path = os.fspath(source)
    store = stores.get(path)
    if store is None:
        from ..store import open_store
        store = stores[path] = open_store(path)
    return store


def _entry(store, key: str, src: int | None):
    """The key's entry, refreshed once if it is not what the main process saw (a
    long-lived Dask worker may hold an older view of the store)."""
    try:
        e = store.source_entry(key)
    except KeyError:
        if src is None:
            raise
        e = None
    if src is not None and (e is None or e.checksum != src):
        store.refresh()
        e = store.source_entry(key)
    return e


def release(store, e) -> None:
    """Drop this process's pages of ``e``'s payload: they stay in the page cache, but no
    longer count in this process's memory, which would otherwise grow to the store's size.

    The range is widened to whole AROUND blocks: reading a payload also mapped
    the cached pages around it (fault-around, or the rest of a large folio:
    freshly written files are cached in folios of up to 2 MiB), the end of the
    record before among them, which no later release would cover.  Any of
    those pages still in use is simply mapped again when next read."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:
        return
    try:
        e, m = store._mapping(e)
        start = e.payload_offset - e.payload_offset % AROUND
        end = min(len(m), -(-(e.payload_offset + e.payload_len) // AROUND) * AROUND)
        if end > start:
            m.madvise(advice, start, end - start)
    except (OSError, ValueError, AttributeError):
        pass


def raw_result(key: str, e) -> KeyResult:
    n = 1
    for d in e.shape:
        n *= d
    disk = e.end - e.offset
    return KeyResult(key, "raw", e.checksum, e.dtype, n, e.payload_len, disk,
                     nbits=8 * e.payload_len, payload=e.payload_len, disk=disk)


def measure_key(store, key: str, codecs: list, src: int | None = None) -> list[KeyResult]:
    """The raw baseline and one KeyResult per codec for ``key``.

    A stored variant made from this very tensor (same checksum) gives its
    recorded sizes; otherwise the tensor is encoded and decoded here.
    """
    e = _entry(store, key, src)
    base = raw_result(key, e)
    out = [base]
    used = False
    try:
        for codec in codecs:
            r = KeyResult(key, codec.spec, base.src, base.dtype, base.elements, base.raw_bytes,
                          base.raw_disk)
            stored = store._find(fmt.KIND_VARIANT, f"{key}\0{codec.spec}")
            if stored is not None and stored.extra.get("src") == e.checksum:
                x = stored.extra
                r.nbits, r.payload, r.disk = x["nbits"], stored.payload_len, stored.end - stored.offset
                r.entropy_bits = (x.get("info") or {}).get("entropy_bits")
                _set_error(r, x["lossless"], x.get("err"))
            elif e.seq == NO_TENSOR:
                r.failed = f"stored as encoded variants only: no tensor to encode with {codec.spec}"
            else:
                used = True
                try:
                    t = trial(codec, store._view(e))
                except NotEncodableError as exc:
                    r.failed = str(exc) or type(exc).__name__
                else:
                    meta = variant_meta(key, e, codec, t)
                    r.nbits, r.payload = t.nbits, len(t.payload)
                    r.disk = record_bytes(meta, len(t.payload))
                    r.entropy_bits = t.entropy_bits
                    _set_error(r, t.lossless, t.err)
            out.append(r)
    finally:
        if used:
            release(store, e)
    return out


def _set_error(r: KeyResult, lossless: bool, err: dict | None) -> None:
    r.lossless = bool(lossless)
    if err:
        r.max_abs, r.sq_err, r.sq_ref = float(err["max_abs"]), float(err["sq_err"]), float(err["sq_ref"])


def measure_task(source, specs: list[str], keys: list[str], srcs: list[int] | None = None
                 ) -> list[KeyResult]:
    """A report task: every key of a chunk through every codec."""
    store = worker_store(source)
    codecs = [codec_of(s) for s in specs]
    out: list[KeyResult] = []
    for i, key in enumerate(keys):
        out.extend(measure_key(store, key, codecs, None if srcs is None else srcs[i]))
    return out


def encode_task(source, spec: str, keys: list[str], srcs: list[int] | None = None
                ) -> list[tuple[str, dict | None, bytes | str]]:
    """An encode task: (key, variant meta, payload) per key, or (key, None, reason) if the
    codec cannot represent it.  The main process writes them (a store has one writer)."""
    store = worker_store(source)
    codec = codec_of(spec)
    out: list = []
    for i, key in enumerate(keys):
        e = _entry(store, key, None if srcs is None else srcs[i])
        try:
            t = trial(codec, store._view(e))
        except NotEncodableError as exc:
            out.append((key, None, str(exc)))
        else:
            out.append((key, variant_meta(key, e, codec, t), t.payload))
        finally:
            release(store, e)
    return out

