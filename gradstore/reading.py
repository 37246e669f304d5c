"""The read side of a Store: find entries, map zero-copy views, list keys and buckets.

Mixed into gradstore.store.Store, which holds the namespaces (``path``,
``_namespaces``, ``_buckets``, ``_closed``) and supplies ``_check_open``
and ``refresh``.  When namespaces disagree the newest record wins.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from . import dtypes
from . import format as fmt
from .arrays import payload_view
from .errors import ChecksumError, FormatError
from .index import Entry
from .keys import Selector, parse_bucket, select


class Reading:
    """Reading a Store: ``store[key]``, ``get``, ``read``, ``torch``, ``keys``, buckets."""

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
