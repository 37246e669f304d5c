"""Store: the public object behind ``gradstore.open``.

A store is a directory of namespaces. This module decides which namespace
a call touches; segments, logs and recovery are the namespace's business.
It opens and closes a store and writes into its writer's namespace; the
read side is gradstore.reading, the encoded variants and their accounting
gradstore.studying.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import dtypes
from . import format as fmt
from .arrays import as_array, payload_view
from .errors import GradstoreError, KeyExistsError, ReadOnlyError
from .index import Entry
from .keys import check_key, try_parse
from .marker import NAMESPACE_RE, open_marker, parse_size
from .namespace import Namespace, Problem
from .reading import Reading
from .studying import Studying


def checksum(array) -> int:
    """The xxh3-64 the store records for ``array``'s bytes (C order, little-endian)."""
    arr = as_array(array)
    return fmt.xxh3(payload_view(arr))


class Store(Reading, Studying):
    """A gradstore directory opened for reading ("r") or writing ("a", "w", "x")."""

    def __init__(self, path: str | os.PathLike, mode: str = "r", *, rank: int | None = None,
                 segment_size: int | str | None = None, fsync: bool = False, direct_io: bool = False):
        if mode not in ("r", "a", "w", "x"):
            raise ValueError(f"mode must be 'r', 'a', 'w' or 'x', not {mode!r}")
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 0):
            raise ValueError(f"rank must be a non-negative int, not {rank!r}")
        self.path = Path(path)
        self.mode = mode
        self.rank = rank
        self.fsync = fsync
        self._namespaces: dict[str, Namespace] = {}
        self._writer: Namespace | None = None
        self._buckets: dict[str, list[str]] | None = None
        self._closed = False
        meta = open_marker(self.path, mode, segment_size)
        self.segment_size = parse_size(segment_size) if segment_size is not None else meta["segment_size"]
        try:
            if mode != "r":
                name = "main" if rank is None else f"r{rank}"
                if mode == "w" and rank is None:
                    self._truncate_all()
                ns = Namespace(self.path, name)
                ns.open_write(self.segment_size, fsync, truncate=(mode == "w"), direct=direct_io)
                self._writer = ns
                self._namespaces[name] = ns
            self._discover()
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------

    def _truncate_all(self) -> None:
        """Mode "w" without a rank: empty every namespace, each under its lock."""
        held = []
        try:
            for name in self._namespace_names():
                ns = Namespace(self.path, name)
                ns._lock()
                held.append(ns)
            for ns in held:
                ns._remove_all()
        finally:
            for ns in held:
                ns.close()

    def _namespace_names(self) -> list[str]:
        return sorted(n for n in os.listdir(self.path) if NAMESPACE_RE.fullmatch(n) and (self.path / n).is_dir())

    def _discover(self) -> None:
        for name in self._namespace_names():
            if name not in self._namespaces:
                ns = Namespace(self.path, name)
                ns.open_read()
                self._namespaces[name] = ns

    def refresh(self) -> None:
        """Pick up what other writers committed since open (or the last refresh)."""
        self._check_open()
        for ns in self._namespaces.values():
            ns.refresh()
        self._discover()
        self._buckets = None
        self._encoded_catalog = None   # gradstore.encoded.catalog

    # -- writing ---------------------------------------------------------------

    def _check_writable(self) -> Namespace:
        self._check_open()
        if self._writer is None:
            raise ReadOnlyError(f"{self.path}: opened read-only (mode 'r'); open with mode 'a' to write")
        return self._writer

    def _prepare(self, key: str, value, overwrite: bool) -> tuple[str, np.ndarray]:
        check_key(key)
        if self.rank is not None:
            parsed = try_parse(key)
            if parsed is not None and parsed.rank != self.rank:
                raise ValueError(f"key {key!r} belongs to rank {parsed.rank}, "
                                 f"but this writer is rank {self.rank}")
        arr = as_array(value, what=key)
        if not overwrite and key in self:
            raise KeyExistsError(f"key already stored (pass overwrite=True to replace it): {key!r}")
        return key, arr

    def _append(self, ns: Namespace, prepared: list[tuple[str, np.ndarray]]) -> list[Entry]:
        """Write prepared (key, array) pairs; return once they are committed."""
        now = time.time_ns()
        entries = ns.append_many(fmt.KIND_TENSOR, [
            ({"key": key, "dtype": dtypes.name_of(arr.dtype), "shape": list(arr.shape), "time": now},
             payload_view(arr)) for key, arr in prepared])
        if self._buckets is not None:
            for key, _ in prepared:
                head, sep, _ = key.partition("/")
                if sep and key not in self._buckets.setdefault(head, []):
                    self._buckets[head].append(key)
        return entries

    def write(self, key: str, value, *, overwrite: bool = False) -> Entry:
        """Append one tensor. Returns once the record is committed (see spec section 5)."""
        ns = self._check_writable()
        return self._append(ns, [self._prepare(key, value, overwrite)])[0]

    def write_bucket(self, name: str, tensors: Mapping[str, object], *,
                     overwrite: bool = False) -> list[Entry]:
        """Append every {module: tensor} of a bucket as ``name/module``.

        All keys and values are checked before the first byte is written.
        The records go out together (one write call and one log entry batch
        per segment they land in), and the call returns once all are
        committed.
        """
        ns = self._check_writable()
        if not isinstance(tensors, Mapping):
            raise TypeError(f"write_bucket({name!r}): expected a mapping of module -> tensor")
        check_key(name)
        prepared = [self._prepare(f"{name}/{check_key(module)}", value, overwrite)
                    for module, value in tensors.items()]
        return self._append(ns, prepared)

    def write_encoded(self, name: str, tensors: Mapping[str, object], codecs, *,
                      overwrite: bool = False):
        """Store only the ``codecs`` variants of a bucket's tensors, not the tensors.

        Each ``name/module`` gets one variant record per codec (a run for
        the bucket); a tensor that no codec can represent is stored as a
        tensor instead. Such keys are listed by :meth:`encoded_keys` and
        read with :meth:`variant`. Returns a gradstore.encoded.EncodedWrite.
        """
        from .encoded import codecs_of, write
        ns = self._check_writable()
        if not isinstance(tensors, Mapping):
            raise TypeError(f"write_encoded({name!r}): expected a mapping of module -> tensor")
        codecs = codecs_of(codecs)
        check_key(name)
        prepared = [self._prepare(f"{name}/{check_key(module)}", value, overwrite)
                    for module, value in tensors.items()]
        for key, _ in prepared:
            if overwrite and self._find(fmt.KIND_TENSOR, key) is not None:
                # Variants alone would leave the old tensor readable as store[key].
                raise KeyExistsError(f"{key!r} holds a tensor: write_encoded cannot replace it "
                                     f"with variants only (write_bucket(..., overwrite=True) "
                                     f"replaces the tensor; encode() adds its variants)")
            if not overwrite:
                for c in codecs:
                    if self._find(fmt.KIND_VARIANT, f"{key}\0{c.spec}") is not None:
                        raise KeyExistsError(f"{c.spec} variant already stored (pass overwrite=True "
                                             f"to replace it): {key!r}")
        return write(self, ns, prepared, codecs)

    def sync(self) -> None:
        """Make everything written so far durable (fsync segments, log and directory)."""
        ns = self._check_writable()
        ns.sync()

    # -- maintenance -----------------------------------------------------------

    def verify(self) -> list[Problem]:
        """Every damaged record of every namespace (empty when all is well)."""
        self._check_open()
        return [p for ns in self._namespaces.values() for p in ns.verify()]

    def compact(self) -> tuple[int, int]:
        """Reclaim the space of overwritten records in this writer's namespace."""
        ns = self._check_writable()
        self._buckets = self._encoded_catalog = None
        return ns.compact()

    def info(self) -> dict:
        """Counts and sizes, as ``gradstore info`` prints them."""
        from .maintenance import info
        self._check_open()
        return info(self)

    # -- lifecycle -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise GradstoreError(f"{self.path}: store is closed")

    def close(self) -> None:
        """Commit durably (fsync) and release the lock. Views already returned stay valid."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for ns in self._namespaces.values():
            try:
                ns.close()
            except Exception as exc:  # close the others, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"mode={self.mode!r}"
        return f"<gradstore.Store {str(self.path)!r} {state}>"


def open_store(path: str | os.PathLike, mode: str = "r", *, rank: int | None = None,
               segment_size: int | str | None = None, fsync: bool = False,
               direct_io: bool = False) -> Store:
    """Open a store: "r" read (default), "a" read/write/create, "w" truncate, "x" create new.

    ``direct_io``: a writer appends its records with O_DIRECT, past the page
    cache (gradstore.direct): for bulk writers such as gradient capture, where
    filling the page cache costs CPU time that training needs.  Buffered
    writes where the file system refuses it.
    """
    return Store(path, mode, rank=rank, segment_size=segment_size, fsync=fsync, direct_io=direct_io)


# A read-only mapping of key -> array, as h5py and zarr users expect.  Registered,
# not inherited: keys() takes filters and returns a list, and the mixins would
# compare stores by content.
Mapping.register(Store)
