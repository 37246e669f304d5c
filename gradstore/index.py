"""The in-memory offset table of one namespace, and its columnar snapshot form.

Rows loaded from a snapshot stay in numpy arrays: the keys as one UTF-8 blob,
and one 64-byte row per entry, sorted by the hash of its entry id, with a
directory on the hashes' top bits.  A lookup hashes the id, reads one
directory slot and usually one row, which holds the hash, where the payload
and key are, and a form number (forms.py) that stands for kind, dtype and
shape.  Opening a store of a million keys therefore creates no per-key
Python objects; an Entry is built when a key is asked for, and a plain get
(``locate``) builds none.  Entries appended since the snapshot live in a plain
dict and shadow the base rows.
"""
from __future__ import annotations

import struct
import sys
from typing import NamedTuple

import numpy as np

from . import dtypes
from . import format as fmt
from .errors import FormatError
from .forms import Forms
from .snapcheck import check_columns, check_forms
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
    n: int = 0           # the record's number in its namespace (0: format version 1)

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
                self.dtype, list(self.shape), self.checksum, self.time, self.extra, self.n]

    @classmethod
    def from_log(cls, body: list, ns: str) -> "Entry":
        """The entry of a log body, checked as a record header is (FormatError)."""
        if not isinstance(body, list) or len(body) < 11:
            raise FormatError(f"{ns}: index log entry is not an entry")
        kind, key, seq, off, hlen, plen, dtype, shape, check, t, extra = body[:11]
        n = body[11] if len(body) > 11 else 0
        meta = {"key": key, "dtype": dtype, "shape": shape, "time": t}
        if kind == fmt.KIND_VARIANT:
            if not isinstance(extra, dict):
                raise FormatError(f"{ns}: index log entry of {key!r}: variant without its facts")
            meta.update(extra)
        fmt.check_meta(kind, meta, plen, f"{ns}: index log entry")
        for x in (seq, off, hlen, check, n):
            if type(x) is not int or not 0 <= x < 2**64:
                raise FormatError(f"{ns}: index log entry of {key!r}: bad location")
        if off % fmt.ALIGN or hlen % fmt.ALIGN or off < fmt.SEG_HEADER_SIZE or seq >= 2**32:
            raise FormatError(f"{ns}: index log entry of {key!r}: bad location")
        return cls(kind, key, seq, off, hlen, plen, dtype, tuple(shape), check, t, extra, ns, n)

    @classmethod
    def from_record(cls, rec: fmt.RecordHeader, seq: int, offset: int, ns: str) -> "Entry":
        meta = rec.meta
        extra = None
        if rec.kind == fmt.KIND_VARIANT:
            extra = {k: v for k, v in meta.items() if k not in ("key", "dtype", "shape", "time")}
        return cls(rec.kind, meta["key"], seq, offset, rec.header_len, rec.payload_len,
                   meta["dtype"], tuple(meta["shape"]), rec.checksum, meta.get("time", 0), extra, ns,
                   rec.n)


def entry_id(kind: int, key: str, extra: dict | None) -> str:
    if kind == fmt.KIND_VARIANT:
        return f"{key}\0{extra['codec']}"
    return key


_U64 = np.dtype("<u8")
_COLS = {"kind": "u1", "dtype": "u1", "ndim": "u1", "seq": "<u4", "hlen": "<u4",
         "offset": "<u8", "plen": "<u8", "checksum": "<u8", "time": "<i8", "num": "<u8"}
_OPTIONAL = {"num"}  # columns a version-1 snapshot does not have (read as zeros)
_KINDS = (fmt.KIND_TENSOR, fmt.KIND_VARIANT)

# In memory, a base row is 64 bytes (a cache line), in the order of the
# hashes.  The struct layout and the numpy dtype describe the same bytes;
# ``start`` and ``end`` bound the payload (the record's offset plus its header,
# plus the payload's length).
_ROW = struct.Struct("<QQQQQqIIII")
_ROW_FIELDS = ("hash", "start", "end", "kstart", "checksum", "time", "klen", "seq", "form", "hlen")
_ROW_DTYPE = np.dtype({"names": list(_ROW_FIELDS),
                       "formats": ["<u8", "<u8", "<u8", "<u8", "<u8", "<i8", "<u4", "<u4", "<u4", "<u4"],
                       "offsets": [0, 8, 16, 24, 32, 40, 48, 52, 56, 60], "itemsize": 64})
_PROBE = struct.Struct("<QQQQ16xIII4x")  # what a lookup needs: hash, start, end, kstart, klen, seq, form
assert _ROW.size == _ROW_DTYPE.itemsize == _PROBE.size == 64
_probe = _PROBE.unpack_from
_LAST = 2**64 - 1  # the hash of the sentinel row after the last one
_TENSOR, _VARIANT = fmt.KIND_TENSOR, fmt.KIND_VARIANT
_xxh3 = fmt.xxh3


class Index:
    """id -> Entry for the tensor (kind 1) and variant (kind 2) records of a namespace."""

    def __init__(self, ns: str):
        self.ns = ns
        self._n = 0                                  # rows in the base (from a snapshot)
        self._rows = np.zeros(1, _ROW_DTYPE)         # base rows, hash order, then the sentinel
        self._rows["hash"][0] = _LAST
        self._forms = Forms.empty()
        self._built = self._forms.built
        self._order = np.zeros(0, np.uint32)         # row -> its row number in the snapshot
        self._blob = b""                             # base keys, NUL-joined UTF-8, snapshot order
        # The hot path reads through memoryviews and struct, which return Python
        # ints without numpy's per-scalar overhead.
        self._rows_mv = memoryview(self._rows.view(np.uint8))
        self._dir_mv = memoryview(np.zeros(2, np.uint32))  # -> byte offset of a row in _rows
        self._sentinel = 0                           # byte offset of the sentinel row
        self._order_mv = memoryview(self._order)
        self._shift = 64
        self._extra: dict[int, dict] = {}            # snapshot row number -> variant facts
        self._overridden: set[int] = set()           # base rows shadowed by the tail
        self._tail: dict[int, dict[str, Entry]] = {k: {} for k in _KINDS}
        self._tensors = self._tail[fmt.KIND_TENSOR]
        self._count = {k: 0 for k in _KINDS}
        self._base_keys: list[str] | None = None
        self._by_snapshot: np.ndarray | None = None
        self._nums = np.zeros(0, np.uint64)          # snapshot row number -> record number n
        self.last_n = 0                              # the greatest record number of any entry

    # -- reading -------------------------------------------------------------

    def __len__(self) -> int:
        return self._count[fmt.KIND_TENSOR]

    def _find(self, want: bytes, kind: int) -> tuple | None:
        """(row, payload start, payload end, seq, form) of the base row of an
        entry id (UTF-8), or None."""
        h = _xxh3(want)
        pos = self._dir_mv[h >> self._shift]  # the first row whose hash has h's top bits
        rows = self._rows_mv
        while True:
            rh, start, end, kstart, klen, seq, form = _probe(rows, pos)
            if rh == h:
                if pos == self._sentinel:
                    return None
                f = self._built[form] or self._forms.build(form)
                if f[0] == kind:
                    got = self._blob[kstart:kstart + klen]
                    if kind == _VARIANT:
                        got += b"\0" + self._extra[self._order_mv[pos >> 6]]["codec"].encode("utf-8")
                    if got == want:
                        return pos >> 6, start, end, seq, f
            elif rh > h:
                return None
            pos += 64

    def entry_at(self, row: int) -> Entry:
        _, start, end, kstart, check, t, klen, seq, form, hlen = _ROW.unpack_from(self._rows_mv, row << 6)
        kind, _, shape, dtype = self._built[form] or self._forms.build(form)
        snap_row = self._order_mv[row]
        extra = self._extra.get(snap_row) if kind == fmt.KIND_VARIANT else None
        # tuple.__new__ skips the NamedTuple's argument parsing.
        return tuple.__new__(Entry, (kind, self._blob[kstart:kstart + klen].decode("utf-8"), seq,
                                     start - hlen, hlen, end - start, dtype, shape, check, t, extra, self.ns,
                                     int(self._nums[snap_row])))

    def get(self, kind: int, id_: str) -> Entry | None:
        e = self._tail[kind].get(id_)
        if e is not None or not self._n:
            return e
        hit = self._find(id_.encode("utf-8"), kind)
        return None if hit is None else self.entry_at(hit[0])

    def locate(self, key: str) -> tuple | None:
        """(seq, payload start, payload end, numpy dtype, shape) of a tensor key.

        What a zero-copy get needs and no more: no Entry is built, which
        for a snapshot row is most of a lookup's cost.
        """
        if self._tensors:  # entries since the snapshot (none in a store opened to read it)
            e = self._tensors.get(key)
            if e is not None:
                start = e.offset + e.header_len
                return e.seq, start, start + e.payload_len, dtypes.to_numpy(e.dtype), e.shape
        # _find, inlined: this is the hot path of a get.  An empty base needs
        # no test of its own: its directory leads to the sentinel.
        want = key.encode()
        h = _xxh3(want)
        pos = self._dir_mv[h >> self._shift]
        while True:
            rh, start, end, kstart, klen, seq, form = _probe(self._rows_mv, pos)
            if rh == h:
                if pos == self._sentinel:
                    return None
                if self._blob[kstart:kstart + klen] == want:
                    f = self._built[form] or self._forms.build(form)
                    if f[0] == _TENSOR:
                        dt = f[1] if f[1] is not None else self._forms.numpy_dtype(form)
                        return seq, start, end, dt, f[2]
            elif rh > h:
                return None
            pos += 64

    def _base(self, field: str) -> np.ndarray:
        return self._rows[field][:self._n]

    def _live_base_rows(self, kind: int | None = None) -> np.ndarray:
        """Live base rows, in snapshot order."""
        if self._by_snapshot is None:
            self._by_snapshot = np.argsort(self._order)  # snapshot row number -> row
        rows = self._by_snapshot
        mask = np.ones(self._n, bool)
        if kind is not None:
            mask &= self._forms.kind[self._base("form")] == kind
        if self._overridden:
            mask[np.fromiter(self._overridden, np.int64)] = False
        return rows if mask.all() else rows[mask[rows]]

    def ids(self, kind: int = fmt.KIND_TENSOR) -> list[str]:
        """Live entry ids of one kind: base rows first (snapshot order), then later entries."""
        if self._base_keys is None:
            self._base_keys = self._blob[:-1].decode("utf-8").split("\0") if self._n else []
        keys = self._base_keys
        snap_rows = self._order[self._live_base_rows(kind)].tolist()
        if kind == fmt.KIND_VARIANT:   # (even when every base row is one: ids hold the codec)
            out = [f"{keys[r]}\0{self._extra[r]['codec']}" for r in snap_rows]
        elif len(snap_rows) == self._n:
            out = list(keys)
        else:
            out = [keys[r] for r in snap_rows]
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
            ends = (self._base("end") + np.uint64(fmt.ALIGN - 1)) \
                & ~np.uint64(fmt.ALIGN - 1)
            kinds = self._forms.kind[self._base("form")]
            pairs = kinds.astype(np.uint64) << np.uint64(32) | self._base("seq").astype(np.uint64)
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
        if entry.n > self.last_n:
            self.last_n = entry.n
        kind = entry.kind
        id_ = entry.id
        table = self._tail[kind]
        if id_ not in table:
            hit = self._find(id_.encode("utf-8"), kind) if self._n else None
            if hit is not None and hit[0] not in self._overridden:
                self._overridden.add(hit[0])  # a newer entry shadows the base row
            else:
                self._count[kind] += 1
        table[id_] = entry

    # -- snapshot form ---------------------------------------------------------

    def to_snapshot(self, log: int, log_offset: int) -> dict:
        """Columns over the live entries, as spec/FORMAT.md section 6 lays out."""
        base = self._live_base_rows()
        rows = self._rows[base]
        forms = rows["form"]
        tail = [e for k in _KINDS for e in self._tail[k].values()]
        base_cols = {"kind": self._forms.kind[forms], "dtype": self._forms.dtype[forms],
                     "ndim": self._forms.ndim[forms], "seq": rows["seq"], "hlen": rows["hlen"],
                     "offset": rows["start"] - rows["hlen"], "plen": rows["end"] - rows["start"],
                     "checksum": rows["checksum"], "time": rows["time"]}
        tail_rows = [(e.kind, dtypes.CODE[e.dtype], len(e.shape), e.seq, e.header_len, e.offset,
                      e.payload_len, e.checksum, e.time, e.n) for e in tail]
        base_cols["num"] = self._nums[self._order[base]]
        cols = {name: np.concatenate([base_cols[name].astype(dt),
                                      np.array([row[i] for row in tail_rows], dt)]).astype(dt)
                for i, (name, dt) in enumerate(_COLS.items())}
        dims = [self._forms.row_dims(forms), np.fromiter((d for e in tail for d in e.shape), _U64)]
        blob = self._blob
        keys = [blob[k:k + n] for k, n in zip(rows["kstart"].tolist(), rows["klen"].tolist())]
        keys += [e.key.encode("utf-8") for e in tail]
        extra = {}
        if self._extra:
            for i, r in enumerate(self._order[base].tolist()):
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
                "dims": np.concatenate(dims).astype(_U64).tobytes(),
                "hash": hashes[order].tobytes(), "order": order.astype("<u4").tobytes()}
        body.update({name: col.tobytes() for name, col in cols.items()})
        return body

    @classmethod
    def from_snapshot(cls, body: dict, ns: str) -> "Index":
        idx = cls(ns)
        n = body["n"]
        if sys.byteorder != "little":  # struct and the memoryviews read native order
            raise ValueError("gradstore snapshots are read on little-endian machines only")
        cols = {name: np.frombuffer(body[name], np.dtype(dt)) if name in body or name not in _OPTIONAL
                else np.zeros(n, np.dtype(dt)) for name, dt in _COLS.items()}
        for name, col in cols.items():
            if len(col) != n:
                raise ValueError(f"snapshot column {name} has {len(col)} rows, expected {n}")
        dims = np.frombuffer(body["dims"], _U64)
        if int(cols["ndim"].sum(dtype=np.uint64)) != len(dims):
            raise ValueError("snapshot shapes disagree with ndim")
        blob = body["keys"]
        seps = np.flatnonzero(np.frombuffer(blob, np.uint8) == 0)
        if len(seps) != n:
            raise ValueError("snapshot key list disagrees with n")
        hashes = np.frombuffer(body["hash"], _U64)
        order = np.frombuffer(body["order"], np.dtype("<u4"))
        if len(hashes) != n or len(order) != n:
            raise ValueError("snapshot hash columns disagree with n")
        if n and (int(order.max()) >= n or (n > 1 and bool((hashes[1:] < hashes[:-1]).any()))):
            raise ValueError("snapshot hash columns are not a sorted permutation")
        check_columns(cols, dims, n)
        forms, form_of = Forms.of_rows(cols["kind"], cols["dtype"], cols["ndim"], dims)
        kstart = np.zeros(n, np.uint64)
        kstart[1:] = seps[:-1] + 1
        snap = np.empty(n, _ROW_DTYPE)  # rows in snapshot order, then one gather into hash order
        snap["start"] = cols["offset"] + cols["hlen"]
        snap["end"] = snap["start"] + cols["plen"]
        snap["kstart"] = kstart
        snap["klen"] = seps - kstart
        snap["form"] = form_of
        for name in ("checksum", "time", "seq", "hlen"):
            snap[name] = cols[name]
        rows = np.zeros(n + 1, _ROW_DTYPE)
        np.take(snap.view(_U64).reshape(n, 8), order, axis=0, out=rows[:n].view(_U64).reshape(n, 8))
        del snap
        rows["hash"][:n] = hashes
        rows["hash"][n] = _LAST
        idx._n, idx._rows, idx._forms, idx._order, idx._blob = n, rows, forms, order, blob
        idx._built = forms.built
        idx._rows_mv = memoryview(rows.view(np.uint8))
        idx._order_mv = memoryview(order).cast("B").cast("I")
        idx._extra = {int(k): v for k, v in body["extra"].items()}
        idx._nums = cols["num"]
        idx.last_n = int(cols["num"].max()) if n else 0
        check_forms(forms, form_of, cols["plen"], idx._extra, cols["kind"])
        # directory[b] = where the first row whose hash's top bits are >= b
        # starts (its byte offset).  With 2-4 slots per row, a key's row is the
        # first one tried 80-90% of the time.
        bits = min(n.bit_length() + 1, 32)
        idx._shift = 64 - bits
        counts = np.bincount((hashes >> np.uint64(idx._shift)).astype(np.intp), minlength=1 << bits)
        directory = np.zeros((1 << bits) + 1, np.uint32 if (n << 6) < 2**32 else np.uint64)
        np.cumsum(counts, out=directory[1:])
        directory <<= 6
        idx._dir_mv = memoryview(directory)
        idx._sentinel = n << 6
        kinds = forms.kind[form_of]
        for k in _KINDS:
            idx._count[k] = int(np.count_nonzero(kinds == k))
        return idx

