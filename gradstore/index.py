"""The in-memory offset table of one namespace, and its columnar snapshot form.

Rows loaded from a snapshot stay in numpy arrays: the keys as one UTF-8 blob,
the snapshot's sorted column of key hashes with a directory on their top bits
(one probe finds a key's few candidates), and the fields as one 64-byte row
per entry.  Opening a store of a million keys therefore creates no per-key
Python objects; an Entry is built when a key is asked for, and a plain get
(``locate``) builds none.  Entries appended since the snapshot live in a plain
dict and shadow the base rows.
"""
from __future__ import annotations

import bisect
import struct
import sys
from typing import NamedTuple

import numpy as np

from . import dtypes
from . import format as fmt
from .segment import segment_name


class Entry(NamedTuple):
    """Where a record lives and what it holds."""

    kind: int
    key: str
    seq: int
    offset: int          # of the record in its segment
    header_len: int
    payload_len: int
    dtype: str
    shape: tuple
    checksum: int        # xxh3-64 of the payload
    time: int
    extra: dict | None   # variant facts (codec, nbits, ...) for kind 2
    ns: str = ""

    @property
    def payload_offset(self) -> int:
        return self.offset + self.header_len

    @property
    def end(self) -> int:
        return fmt.align(self.offset + self.header_len + self.payload_len)

    @property
    def nbytes(self) -> int:
        return self.payload_len

    @property
    def stream(self) -> int:
        return fmt.KIND_STREAM[self.kind]

    @property
    def segment(self) -> str:
        return f"{self.ns}/{segment_name(self.stream, self.seq)}"

    @property
    def id(self) -> str:
        return entry_id(self.kind, self.key, self.extra)

    @property
    def codec(self) -> str | None:
        return self.extra.get("codec") if self.extra else None

    def to_log(self) -> list:
        return [self.kind, self.key, self.seq, self.offset, self.header_len, self.payload_len,
                self.dtype, list(self.shape), self.checksum, self.time, self.extra]

    @classmethod
    def from_log(cls, body: list, ns: str) -> "Entry":
        kind, key, seq, off, hlen, plen, dtype, shape, check, t, extra = body[:11]
        return cls(kind, key, seq, off, hlen, plen, dtype, tuple(shape), check, t, extra, ns)

    @classmethod
    def from_record(cls, rec: fmt.RecordHeader, seq: int, offset: int, ns: str) -> "Entry":
        meta = rec.meta
        extra = None
        if rec.kind == fmt.KIND_VARIANT:
            extra = {k: v for k, v in meta.items() if k not in ("key", "dtype", "shape", "time")}
        return cls(rec.kind, meta["key"], seq, offset, rec.header_len, rec.payload_len,
                   meta["dtype"], tuple(meta["shape"]), rec.checksum, meta.get("time", 0), extra, ns)


def entry_id(kind: int, key: str, extra: dict | None) -> str:
    if kind == fmt.KIND_VARIANT:
        return f"{key}\0{extra['codec']}"
    return key


_U64 = np.dtype("<u8")
_COLS = {"kind": "u1", "dtype": "u1", "ndim": "u1", "seq": "<u4", "hlen": "<u4",
         "offset": "<u8", "plen": "<u8", "checksum": "<u8", "time": "<i8"}
_KINDS = (fmt.KIND_TENSOR, fmt.KIND_VARIANT)

# In memory, the snapshot's columns become one row of 64 bytes per entry (a
# cache line), with where its key and shape sit: a lookup touches one row, not
# eleven columns.  The struct layout and the numpy dtype describe the same bytes.
_ROW = struct.Struct("<BBBxIIIQQQqQQ")
_ROW_FIELDS = ("kind", "dtype", "ndim", "seq", "hlen", "klen", "offset", "plen", "checksum",
               "time", "kstart", "dstart")
_ROW_DTYPE = np.dtype({"names": list(_ROW_FIELDS),
                       "formats": ["u1", "u1", "u1", "<u4", "<u4", "<u4", "<u8", "<u8", "<u8",
                                   "<i8", "<u8", "<u8"],
                       "offsets": [0, 1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56], "itemsize": 64})
# Parts of a row, for the hot paths: unpacking fewer fields makes fewer ints.
_ROW_KEY = struct.Struct("<B11xI32xQ")                  # kind, klen, kstart
_ROW_LOCATE = struct.Struct("<xBBxII4xQQ24xQ")         # dtype, ndim, seq, hlen, offset, plen, dstart
_DIMS = [struct.Struct(f"<{n}Q") for n in range(256)]  # a shape of n dims
assert _ROW.size == _ROW_DTYPE.itemsize == _ROW_LOCATE.size and _ROW_KEY.size == 56
_MIN_DIRECTORY = 256  # below this many rows, binary search is as quick as the directory


class Index:
    """id -> Entry for the tensor (kind 1) and variant (kind 2) records of a namespace."""

    def __init__(self, ns: str):
        self.ns = ns
        self._n = 0                                  # rows in the base (from a snapshot)
        rows = np.zeros(0, _ROW_DTYPE)
        self._cols = {name: rows[name] for name in _ROW_FIELDS}  # views of the rows
        self._dims = np.zeros(0, _U64)
        self._blob = b""                             # base keys, NUL-joined UTF-8
        # The hot path reads through memoryviews and struct, which return Python
        # ints without numpy's per-scalar overhead.
        self._rows_mv = self._hash_mv = self._order_mv = self._dir_mv = None
        self._dims_buf = b""
        self._shift = 64
        self._extra: dict[int, dict] = {}
        self._overridden: set[int] = set()           # base rows shadowed by the tail
        self._tail: dict[int, dict[str, Entry]] = {k: {} for k in _KINDS}
        self._count = {k: 0 for k in _KINDS}
        self._base_keys: list[str] | None = None

    # -- reading -------------------------------------------------------------

    def __len__(self) -> int:
        return self._count[fmt.KIND_TENSOR]

    def _base_row(self, kind: int, id_: str) -> int | None:
        """The base row of an entry id, or None.  The hot path of a get."""
        if not self._n:
            return None
        want = id_.encode("utf-8")
        h = fmt.xxh3(want)
        hashes = self._hash_mv
        if self._dir_mv is not None:  # the few rows whose hashes share h's top bits
            b = h >> self._shift
            i, stop = self._dir_mv[b], self._dir_mv[b + 1]
            while i < stop and hashes[i] < h:
                i += 1
        else:
            i = bisect.bisect_left(hashes, h)
        while i < self._n and hashes[i] == h:
            row = self._order_mv[i]
            row_kind, klen, kstart = _ROW_KEY.unpack_from(self._rows_mv, row * 64)
            if row_kind == kind:
                got = self._blob[kstart:kstart + klen]
                if kind == fmt.KIND_VARIANT:
                    got += b"\0" + self._extra[row]["codec"].encode("utf-8")
                if got == want:
                    return row
            i += 1
        return None

    def _shape(self, ndim: int, dstart: int) -> tuple:
        return _DIMS[ndim].unpack_from(self._dims_buf, dstart * 8)

    def entry_at(self, row: int) -> Entry:
        kind, dt, ndim, seq, hlen, klen, offset, plen, check, t, kstart, dstart = \
            _ROW.unpack_from(self._rows_mv, row * 64)
        # tuple.__new__ skips the NamedTuple's argument parsing.
        return tuple.__new__(Entry, (kind, self._blob[kstart:kstart + klen].decode("utf-8"), seq,
                                     offset, hlen, plen, dtypes.NAMES[dt], self._shape(ndim, dstart),
                                     check, t, self._extra.get(row), self.ns))

    def get(self, kind: int, id_: str) -> Entry | None:
        e = self._tail[kind].get(id_)
        if e is not None or not self._n:
            return e
        row = self._base_row(kind, id_)
        return None if row is None else self.entry_at(row)

    def locate(self, key: str) -> tuple | None:
        """(seq, payload start, payload end, numpy dtype, shape) of a tensor key.

        What a zero-copy get needs and no more: no Entry is built, which
        for a snapshot row is most of a lookup's cost.
        """
        e = self._tail[fmt.KIND_TENSOR].get(key)
        if e is not None:
            start = e.offset + e.header_len
            return e.seq, start, start + e.payload_len, dtypes.to_numpy(e.dtype), e.shape
        row = self._base_row(fmt.KIND_TENSOR, key)
        if row is None:
            return None
        dt, ndim, seq, hlen, offset, plen, dstart = _ROW_LOCATE.unpack_from(self._rows_mv, row * 64)
        start = offset + hlen
        return seq, start, start + plen, dtypes.NUMPY[dt], self._shape(ndim, dstart)

    def _live_base_rows(self, kind: int | None = None) -> np.ndarray:
        mask = np.ones(self._n, bool)
        if kind is not None:
            mask &= self._cols["kind"] == kind
        if self._overridden:
            mask[np.fromiter(self._overridden, np.int64)] = False
        return np.flatnonzero(mask)

    def ids(self, kind: int = fmt.KIND_TENSOR) -> list[str]:
        """Live entry ids of one kind: base rows first, then later entries."""
        if self._base_keys is None:
            self._base_keys = self._blob[:-1].decode("utf-8").split("\0") if self._n else []
        keys = self._base_keys
        rows = self._live_base_rows(kind)
        if len(rows) == self._n:
            out = list(keys)
        elif kind == fmt.KIND_VARIANT:
            out = [f"{keys[r]}\0{self._extra[r]['codec']}" for r in rows.tolist()]
        else:
            out = [keys[r] for r in rows.tolist()]
        out.extend(self._tail[kind])
        return out

    def entries(self, kind: int | None = None):
        for r in self._live_base_rows(kind).tolist():
            yield self.entry_at(r)
        for k in ((kind,) if kind is not None else _KINDS):
            yield from self._tail[k].values()

    def high_water(self) -> dict[tuple[int, int], int]:
        """(stream, seq) -> end of the last record any entry points into there."""
        hw: dict[tuple[int, int], int] = {}
        if self._n:
            r = self._cols
            ends = (r["offset"] + r["hlen"].astype(np.uint64) + r["plen"] + np.uint64(fmt.ALIGN - 1)) \
                & ~np.uint64(fmt.ALIGN - 1)
            pairs = r["kind"].astype(np.uint64) << np.uint64(32) | r["seq"].astype(np.uint64)
            for pair in np.unique(pairs).tolist():
                k = (fmt.KIND_STREAM[pair >> 32], pair & 0xFFFFFFFF)
                hw[k] = int(ends[pairs == pair].max())
        for table in self._tail.values():
            for e in table.values():
                k = (e.stream, e.seq)
                if e.end > hw.get(k, 0):
                    hw[k] = e.end
        return hw

    # -- changing ------------------------------------------------------------

    def add(self, entry: Entry) -> None:
        kind = entry.kind
        id_ = entry.id
        table = self._tail[kind]
        if id_ not in table:
            row = self._base_row(kind, id_)
            if row is not None and row not in self._overridden:
                self._overridden.add(row)  # a newer entry shadows the base row
            else:
                self._count[kind] += 1
        table[id_] = entry

    # -- snapshot form ---------------------------------------------------------

    def to_snapshot(self, log: int, log_offset: int) -> dict:
        """Columns over the live entries, as spec/FORMAT.md section 6 lays out."""
        base = self._live_base_rows()
        tail = [e for k in _KINDS for e in self._tail[k].values()]
        tail_rows = [(e.kind, dtypes.CODE[e.dtype], len(e.shape), e.seq, e.header_len, e.offset,
                      e.payload_len, e.checksum, e.time) for e in tail]
        cols = {name: np.concatenate([self._cols[name][base],
                                      np.array([row[i] for row in tail_rows], dt)]).astype(dt)
                for i, (name, dt) in enumerate(_COLS.items())}
        dims_parts = []
        if len(base):
            nd = self._cols["ndim"][base].astype(np.int64)
            starts = self._cols["dstart"][base].astype(np.int64)
            idx = np.repeat(starts - np.concatenate([[0], np.cumsum(nd)[:-1]]), nd) + np.arange(nd.sum())
            dims_parts.append(self._dims[idx])
        dims_parts.append(np.fromiter((d for e in tail for d in e.shape), _U64))
        blob = self._blob
        base_keys = [blob[k:k + n] for k, n in zip(self._cols["kstart"][base].tolist(),
                                                   self._cols["klen"][base].tolist())]
        keys = base_keys + [e.key.encode("utf-8") for e in tail]
        extra = {}
        for i, r in enumerate(base.tolist()):
            if r in self._extra:
                extra[i] = self._extra[r]
        for i, e in enumerate(tail, start=len(base)):
            if e.extra is not None:
                extra[i] = e.extra
        hashes = np.fromiter(
            (fmt.xxh3(k + b"\0" + extra[i]["codec"].encode("utf-8")) if cols["kind"][i] == fmt.KIND_VARIANT
             else fmt.xxh3(k) for i, k in enumerate(keys)), _U64, count=len(keys))
        order = np.argsort(hashes, kind="stable")
        body = {"n": len(keys), "log": log, "log_offset": log_offset,
                "keys": b"\0".join(keys) + (b"\0" if keys else b""), "extra": extra,
                "dims": np.concatenate(dims_parts).astype(_U64).tobytes(),
                "hash": hashes[order].tobytes(), "order": order.astype("<u4").tobytes()}
        body.update({name: col.tobytes() for name, col in cols.items()})
        return body

    @classmethod
    def from_snapshot(cls, body: dict, ns: str) -> "Index":
        idx = cls(ns)
        n = body["n"]
        if sys.byteorder != "little":  # struct and the memoryviews read native order
            raise ValueError("gradstore snapshots are read on little-endian machines only")
        rows = np.empty(n, _ROW_DTYPE)
        for name, dt in _COLS.items():
            col = np.frombuffer(body[name], np.dtype(dt))
            if len(col) != n:
                raise ValueError(f"snapshot column {name} has {len(col)} rows, expected {n}")
            rows[name] = col
        idx._dims = np.frombuffer(body["dims"], _U64)
        dim_end = np.cumsum(rows["ndim"], dtype=np.uint64)
        if (dim_end[-1] if n else 0) != len(idx._dims):
            raise ValueError("snapshot shapes disagree with ndim")
        rows["dstart"] = dim_end - rows["ndim"]
        blob = body["keys"]
        seps = np.flatnonzero(np.frombuffer(blob, np.uint8) == 0)
        if len(seps) != n:
            raise ValueError("snapshot key list disagrees with n")
        rows["kstart"][1:] = seps[:-1] + 1
        rows["kstart"][:1] = 0
        rows["klen"] = seps - rows["kstart"]
        hashes = np.frombuffer(body["hash"], _U64)
        order = np.frombuffer(body["order"], np.dtype("<u4"))
        if len(hashes) != n or len(order) != n:
            raise ValueError("snapshot hash columns disagree with n")
        idx._blob = blob
        idx._cols = {name: rows[name] for name in _ROW_FIELDS}
        idx._extra = {int(k): v for k, v in body["extra"].items()}
        idx._n = n
        idx._rows_mv = memoryview(rows.view(np.uint8))
        idx._hash_mv = memoryview(body["hash"]).cast("Q")
        idx._order_mv = memoryview(body["order"]).cast("I")
        idx._dims_buf = body["dims"]
        if n >= _MIN_DIRECTORY:
            # directory[b] = the first sorted hash whose top bits are >= b: one
            # probe finds the few rows to search, instead of log2(n) probes.
            bits = n.bit_length() - 1
            idx._shift = 64 - bits
            counts = np.bincount((hashes >> np.uint64(idx._shift)).astype(np.intp), minlength=1 << bits)
            directory = np.zeros((1 << bits) + 1, np.uint32)
            np.cumsum(counts, out=directory[1:])
            idx._dir_mv = memoryview(directory)
        kinds = rows["kind"]
        for k in _KINDS:
            idx._count[k] = int(np.count_nonzero(kinds == k))
        return idx
