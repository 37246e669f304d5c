"""The in-memory offset table of one namespace, and its columnar snapshot form.

Rows loaded from a snapshot stay in numpy columns and become Entry tuples
only when asked for, so opening a store of a million keys costs one msgpack
unpack of the key list and one dict build, not a million objects.
"""
from __future__ import annotations

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


class Index:
    """id -> Entry for the tensor (kind 1) and variant (kind 2) records of a namespace."""

    def __init__(self, ns: str):
        self.ns = ns
        self.rows: dict[int, dict[str, int]] = {fmt.KIND_TENSOR: {}, fmt.KIND_VARIANT: {}}
        self._cols: dict[str, np.ndarray] = {}
        self._keys: list[str] = []
        self._dim_start = np.zeros(1, np.int64)
        self._extra: dict[int, dict] = {}
        self._nbase = 0
        self._tail: list[Entry] = []
        self.superseded = 0       # rows replaced by a later entry for the same id

    # -- reading -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.rows[fmt.KIND_TENSOR])

    def entry_at(self, row: int) -> Entry:
        if row >= self._nbase:
            return self._tail[row - self._nbase]
        c = self._cols
        ndim = int(c["ndim"][row])
        start = int(self._dim_start[row])
        shape = tuple(int(d) for d in c["dims"][start:start + ndim]) if ndim else ()
        return Entry(int(c["kind"][row]), self._keys[row], int(c["seq"][row]), int(c["offset"][row]),
                     int(c["hlen"][row]), int(c["plen"][row]), dtypes.NAMES[c["dtype"][row]], shape,
                     int(c["checksum"][row]), int(c["time"][row]), self._extra.get(row), self.ns)

    def get(self, kind: int, id_: str) -> Entry | None:
        row = self.rows[kind].get(id_)
        return None if row is None else self.entry_at(row)

    def ids(self, kind: int = fmt.KIND_TENSOR):
        return self.rows[kind].keys()

    def entries(self, kind: int | None = None):
        kinds = (kind,) if kind is not None else tuple(self.rows)
        for k in kinds:
            for row in self.rows[k].values():
                yield self.entry_at(row)

    def high_water(self) -> dict[tuple[int, int], int]:
        """(stream, seq) -> end of the last record any row points into there."""
        hw: dict[tuple[int, int], int] = {}
        if self._nbase:
            c = self._cols
            ends = (c["offset"] + c["hlen"].astype(np.uint64) + c["plen"] + np.uint64(fmt.ALIGN - 1)) \
                & ~np.uint64(fmt.ALIGN - 1)
            pairs = c["kind"].astype(np.uint64) << np.uint64(32) | c["seq"].astype(np.uint64)
            for pair in np.unique(pairs):
                k = (fmt.KIND_STREAM[int(pair >> np.uint64(32))], int(pair & np.uint64(0xFFFFFFFF)))
                hw[k] = int(ends[pairs == pair].max())
        for e in self._tail:
            k = (e.stream, e.seq)
            if e.end > hw.get(k, 0):
                hw[k] = e.end
        return hw

    # -- changing ------------------------------------------------------------

    def add(self, entry: Entry) -> None:
        table = self.rows[entry.kind]
        id_ = entry.id
        if id_ in table:
            self.superseded += 1
        table[id_] = self._nbase + len(self._tail)
        self._tail.append(entry)

    # -- snapshot form ---------------------------------------------------------

    def to_snapshot(self, log: int, log_offset: int) -> dict:
        """Columns over the live rows, as spec/FORMAT.md section 6 lays out."""
        live = np.fromiter((r for t in self.rows.values() for r in t.values()), np.int64)
        live.sort()
        base = live[live < self._nbase]
        tail = [self._tail[r - self._nbase] for r in live[live >= self._nbase]]
        cols: dict[str, np.ndarray] = {}
        for name, dt in _COLS.items():
            head = self._cols[name][base] if self._nbase else np.zeros(0, dt)
            cols[name] = np.concatenate([head.astype(dt), self._tail_column(tail, name, dt)])
        dims_parts = []
        if len(base):
            nd = self._cols["ndim"][base].astype(np.int64)
            starts = self._dim_start[base]
            idx = np.repeat(starts - np.concatenate([[0], np.cumsum(nd)[:-1]]), nd) + np.arange(nd.sum())
            dims_parts.append(self._cols["dims"][idx])
        dims_parts.append(np.fromiter((d for e in tail for d in e.shape), _U64))
        keys = [self._keys[r] for r in base] + [e.key for e in tail]
        extra = {}
        for i, r in enumerate(live):
            e = self._extra.get(int(r)) if r < self._nbase else self._tail[r - self._nbase].extra
            if e is not None:
                extra[i] = e
        body = {"n": len(live), "log": log, "log_offset": log_offset, "keys": keys, "extra": extra,
                "dims": np.concatenate(dims_parts).astype(_U64).tobytes()}
        body.update({name: col.tobytes() for name, col in cols.items()})
        return body

    @staticmethod
    def _tail_column(tail: list[Entry], name: str, dt: str) -> np.ndarray:
        get = {
            "kind": lambda e: e.kind, "dtype": lambda e: dtypes.CODE[e.dtype],
            "ndim": lambda e: len(e.shape), "seq": lambda e: e.seq, "hlen": lambda e: e.header_len,
            "offset": lambda e: e.offset, "plen": lambda e: e.payload_len,
            "checksum": lambda e: e.checksum, "time": lambda e: e.time,
        }[name]
        return np.fromiter((get(e) for e in tail), np.dtype(dt), count=len(tail))

    @classmethod
    def from_snapshot(cls, body: dict, ns: str) -> "Index":
        idx = cls(ns)
        n = body["n"]
        idx._cols = {name: np.frombuffer(body[name], np.dtype(dt)) for name, dt in _COLS.items()}
        idx._cols["dims"] = np.frombuffer(body["dims"], _U64)
        if any(len(c) != n for name, c in idx._cols.items() if name != "dims"):
            raise ValueError("snapshot columns disagree in length")
        nd = idx._cols["ndim"].astype(np.int64)
        idx._dim_start = np.concatenate([[0], np.cumsum(nd)]).astype(np.int64)
        if idx._dim_start[-1] != len(idx._cols["dims"]):
            raise ValueError("snapshot shapes disagree with ndim")
        idx._keys = body["keys"]
        idx._extra = {int(k): v for k, v in body["extra"].items()}
        idx._nbase = n
        kinds = idx._cols["kind"]
        tensor_rows = np.flatnonzero(kinds == fmt.KIND_TENSOR)
        if len(tensor_rows) == n:
            idx.rows[fmt.KIND_TENSOR] = dict(zip(idx._keys, range(n)))
        else:
            for r in range(n):
                kind = int(kinds[r])
                idx.rows[kind][entry_id(kind, idx._keys[r], idx._extra.get(r))] = r
        return idx
