"""Store: the public object behind ``gradstore.open``.

A store is a directory of namespaces. This module decides which namespace
a call touches; segments, logs and recovery are the namespace's business.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from . import dtypes
from . import format as fmt
from .arrays import as_array
from .errors import ChecksumError, FormatError, GradstoreError, KeyExistsError, ReadOnlyError
from .index import Entry
from .keys import Selector, check_key, parse_bucket, select, try_parse
from .marker import NAMESPACE_RE, open_marker, parse_size
from .namespace import Namespace, Problem

def checksum(array) -> int:
    """The xxh3-64 the store records for ``array``'s bytes (C order, little-endian)."""
    arr = as_array(array)
    return fmt.xxh3(memoryview(arr.reshape(-1).view(np.uint8)))


def payload_view(arr: np.ndarray) -> memoryview:
    return memoryview(arr.reshape(-1).view(np.uint8))


class Store:
    """A gradstore directory opened for reading ("r") or writing ("a", "w", "x")."""

    def __init__(self, path: str | os.PathLike, mode: str = "r", *, rank: int | None = None,
                 segment_size: int | str | None = None, fsync: bool = False):
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
                ns.open_write(self.segment_size, fsync, truncate=(mode == "w"))
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

    # -- reading ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise GradstoreError(f"{self.path}: store is closed")

    def _find(self, kind: int, id_: str) -> Entry | None:
        found = None
        for ns in self._namespaces.values():
            e = ns.index.get(kind, id_)
            if e is not None and (found is None or e.time > found.time):
                found = e
        return found

    def entry(self, key: str) -> Entry:
        """Where ``key`` is stored and what it holds; KeyError if it is not."""
        self._check_open()
        e = self._find(fmt.KIND_TENSOR, key) if isinstance(key, str) else None
        if e is None:
            specs = self.variant_specs(key) if isinstance(key, str) else []
            if specs:
                raise KeyError(f"{key!r} is stored as encoded variants only ({', '.join(specs)}) "
                               f"in {self.path}: read one with variant(key, spec) "
                               "(gradstore get --codec SPEC)")
            raise KeyError(f"no such key in {self.path}: {key!r}")
        return e

    def source_entry(self, key: str) -> Entry:
        """``entry(key)``, or for a key stored as variants only an entry standing for its
        tensor (dtype, shape, checksum, the record it would take; seq -1): see gradstore.encoded."""
        self._check_open()
        e = self._find(fmt.KIND_TENSOR, key) if isinstance(key, str) else None
        if e is not None:
            return e
        from .encoded import source_entry
        return source_entry(self, key)

    def _mapping(self, e: Entry):
        """The segment map holding ``e``, following a compaction if need be."""
        end = e.payload_offset + e.payload_len
        try:
            return e, self._namespaces[e.ns].maps.get(e.stream, e.seq, end)
        except FileNotFoundError:
            # Compacted since we last looked: follow the log to the new place.
            self.refresh()
            e = self._find(e.kind, e.id) or e
            try:
                return e, self._namespaces[e.ns].maps.get(e.stream, e.seq, e.payload_offset + e.payload_len)
            except FileNotFoundError:
                raise FormatError(f"{self.path}: {e.key!r} is in segment {e.segment}, which is missing "
                                  "(gradstore verify lists what it held)") from None

    def _payload(self, e: Entry) -> np.ndarray:
        """The record's payload bytes as a read-only uint8 view."""
        e, m = self._mapping(e)
        return np.frombuffer(m, dtype=np.uint8, count=e.payload_len, offset=e.payload_offset)

    def _view(self, e: Entry) -> np.ndarray:
        return self._located_view(e)[1]

    def _located_view(self, e: Entry) -> tuple[Entry, np.ndarray]:
        """(the entry as found, a view of its payload) — after a compaction the
        entry is the moved one, so checksums are checked against the right bytes."""
        e, m = self._mapping(e)
        # ndarray over the read-only map: one call, half the cost of frombuffer + reshape.
        return e, np.ndarray(e.shape, dtypes.to_numpy(e.dtype), m, e.payload_offset)

    def __getitem__(self, key: str) -> np.ndarray:
        """A read-only numpy view of the mapped segment: no copy, no checksum."""
        if len(self._namespaces) == 1 and not self._closed and isinstance(key, str):
            # The hot path: one namespace, so no newest-wins choice to make.
            for ns in self._namespaces.values():
                loc = ns.index.locate(key)
                if loc is not None:
                    seq, start, end, dt, shape = loc
                    try:
                        return np.ndarray(shape, dt, ns.maps.get(fmt.STREAM_DATA, seq, end), start)
                    except FileNotFoundError:
                        pass  # compacted since: the general path follows it
        return self._view(self.entry(key))

    def get(self, key: str, default=None):
        """``store[key]``, or ``default`` if the key is not stored (as ``dict.get``)."""
        self._check_open()
        e = self._find(fmt.KIND_TENSOR, key) if isinstance(key, str) else None
        return default if e is None else self._view(e)

    def read(self, key: str, *, verify: bool = True) -> np.ndarray:
        """``store[key]`` after checking the payload's checksum (ChecksumError if it fails).

        Reads every byte of the payload once; ``verify=False`` is ``store[key]``.
        """
        e, arr = self._located_view(self.entry(key))
        if verify:
            self._verify_payload(e, arr)
        return arr

    def _verify_payload(self, e: Entry, arr: np.ndarray) -> None:
        if fmt.xxh3(payload_view(arr)) != e.checksum:
            raise ChecksumError(f"checksum mismatch: key {e.key!r} in {e.segment} at offset "
                                f"{e.offset}", key=e.key, segment=e.segment, offset=e.offset)

    def torch(self, key: str, *, copy: bool = False, verify: bool = False):
        """A writable torch tensor of ``key`` (bf16 stays bf16) that can never write the store.

        By default the record's pages are mapped copy-on-write: no copy for
        reads, and an in-place op copies only the pages it touches, privately
        (payloads under 64 KiB are copied: that is cheaper than a mapping).
        ``copy=True`` returns an ordinary tensor owning a copy.  ``verify=True``
        checks the checksum of the bytes returned.
        """
        from .torch.convert import MAP_MIN_BYTES, array_to_tensor, tensor_to_numpy
        e = self.entry(key)
        if copy or e.payload_len < MAP_MIN_BYTES:
            e, arr = self._located_view(e)
            t = array_to_tensor(arr)
        else:
            e, t = self._file_tensor(e)
        if verify:
            self._verify_payload(e, tensor_to_numpy(t))
        return t

    def _file_tensor(self, e: Entry):
        """(the entry as found, a private copy-on-write tensor over its payload)."""
        from .torch.convert import file_tensor
        e, _ = self._mapping(e)  # follows a compaction, checks the segment's size
        try:
            return e, file_tensor(os.path.join(self.path, e.segment), e.dtype, e.shape, e.payload_offset)
        except FileNotFoundError:
            self.refresh()  # compacted since our map of it was made
            e, _ = self._mapping(self._find(e.kind, e.id) or e)
            return e, file_tensor(os.path.join(self.path, e.segment), e.dtype, e.shape, e.payload_offset)

    def __contains__(self, key: object) -> bool:
        self._check_open()
        return isinstance(key, str) and self._find(fmt.KIND_TENSOR, key) is not None

    def items(self, **filters) -> Iterator[tuple[str, np.ndarray]]:
        """(key, view) pairs in natural order; takes the filters of :meth:`keys`.

        The keys are chosen now, the views made one at a time as the pairs are consumed.
        """
        keys = self.keys(**filters)
        return ((k, self[k]) for k in keys)

    def values(self, **filters) -> Iterator[np.ndarray]:
        """Views in the natural order of their keys; takes the filters of :meth:`keys`."""
        keys = self.keys(**filters)
        return (self[k] for k in keys)

    def _all_keys(self) -> list[str] | dict:
        nss = list(self._namespaces.values())
        if len(nss) == 1:
            return nss[0].index.ids()
        out: dict[str, None] = {}
        for ns in nss:
            out.update(dict.fromkeys(ns.index.ids()))
        return out

    def __len__(self) -> int:
        nss = list(self._namespaces.values())
        return len(nss[0].index) if len(nss) == 1 else len(self._all_keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self, *, rank=None, epoch=None, step=None, bucket=None, module=None) -> list[str]:
        """Keys in natural order, optionally filtered (ints, ranges or lists; module globs)."""
        self._check_open()
        return select(self._all_keys(), Selector(rank, epoch, step, bucket, module))

    def _bucket_table(self) -> dict[str, list[str]]:
        if self._buckets is None:
            table: dict[str, list[str]] = {}
            for key in self._all_keys():
                head, sep, _ = key.partition("/")
                if sep:
                    table.setdefault(head, []).append(key)
            self._buckets = table
        return self._buckets

    def buckets(self, *, rank=None, epoch=None, step=None, bucket=None) -> list[str]:
        """Bucket names (``R_E_S_B``) in natural order, optionally filtered."""
        sel = Selector(rank, epoch, step, bucket)
        parsed = ((parse_bucket(b), b) for b in self._bucket_table())
        chosen = [(k, b) for k, b in parsed if k is not None and sel.matches(k)]
        return [b for _, b in sorted(chosen)]

    def bucket(self, name: str) -> dict[str, np.ndarray]:
        """{module: array} of one bucket, KeyError if it holds nothing."""
        keys = self._bucket_table().get(name)
        if not keys:
            raise KeyError(f"no such bucket in {self.path}: {name!r}")
        return {k[len(name) + 1:]: self[k] for k in sorted(keys)}

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
        if not overwrite:
            for key, _ in prepared:
                for c in codecs:
                    if self._find(fmt.KIND_VARIANT, f"{key}\0{c.spec}") is not None:
                        raise KeyExistsError(f"{c.spec} variant already stored (pass overwrite=True "
                                             f"to replace it): {key!r}")
        return write(self, ns, prepared, codecs)

    def encoded_keys(self, *, rank=None, epoch=None, step=None, bucket=None, module=None) -> list[str]:
        """Keys stored as encoded variants only (no tensor), in natural order; filters as keys()."""
        from .encoded import keys
        self._check_open()
        return select(keys(self), Selector(rank, epoch, step, bucket, module))

    def sync(self) -> None:
        """Make everything written so far durable (fsync segments, log and directory)."""
        ns = self._check_writable()
        ns.sync()

    # -- encoded variants and accounting ----------------------------------------

    def encode(self, spec, keys: list[str] | None = None, *, progress: bool | None = None,
               jobs: int = 1, dask: str | None = None, scheduler_file: str | None = None,
               **filters):
        """Store the ``spec`` variant of each key (all, ``keys`` or a filter) next to it.

        Idempotent: keys already encoded with ``spec`` from the same tensor are
        skipped. Tensors the codec cannot represent (NaN, Inf, out of range)
        are reported in the result, and the others go on.  ``jobs`` worker
        processes (or a Dask cluster) encode; this process writes.
        """
        from .report.encoding import encode
        return encode(self, spec, self.keys(**filters) if keys is None else keys, jobs=jobs,
                      dask=dask, scheduler_file=scheduler_file, progress=progress)

    def variant(self, key: str, spec, verify: bool = False) -> np.ndarray:
        """The stored ``spec`` variant of ``key``, decoded."""
        from .variants import decode_variant
        self._check_open()
        return decode_variant(self, key, spec, verify)

    def variant_entry(self, key: str, spec) -> Entry:
        """The index entry of a stored variant: ``extra`` holds nbits, err, info."""
        from .variants import find_variant
        self._check_open()
        return find_variant(self, key, spec)[1]

    def variant_specs(self, key: str) -> list[str]:
        """Codec specs of the variants stored for ``key``."""
        prefix = key + "\0"
        return sorted({i[len(prefix):] for ns in self._namespaces.values()
                       for i in ns.index.ids(fmt.KIND_VARIANT) if i.startswith(prefix)})

    def sizes(self, codecs=(), keys: list[str] | None = None, group_by=(), *,
              progress: bool | None = None, jobs: int = 1, dask: str | None = None,
              scheduler_file: str | None = None, results=False, **filters) -> list[dict]:
        """Rows of side-by-side sizes per key (or per group) for the raw data and each codec.

        ``jobs`` > 1 spreads the keys over that many worker processes (``dask``:
        a Dask scheduler's address).  ``results``: a results file to resume
        from (see gradstore.report.run); by default none is kept.
        """
        from . import report
        self._check_open()
        rep = report.run(self, codecs, keys, group_by, jobs=jobs, dask=dask,
                         scheduler_file=scheduler_file, results=results, progress=progress,
                         **filters)
        rep.close()
        return rep.rows

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
               segment_size: int | str | None = None, fsync: bool = False) -> Store:
    """Open a store: "r" read (default), "a" read/write/create, "w" truncate, "x" create new."""
    return Store(path, mode, rank=rank, segment_size=segment_size, fsync=fsync)


# A read-only mapping of key -> array, as h5py and zarr users expect.  Registered,
# not inherited: keys() takes filters and returns a list, and the mixins would
# compare stores by content.
Mapping.register(Store)
