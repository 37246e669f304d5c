"""Byte layouts of spec/FORMAT.md: the code twin of that document.

Only packing and unpacking lives here; nothing opens files.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import msgpack
import xxhash

from .errors import FormatError

VERSION = 2              # what this code writes
VERSIONS = (1, 2)        # what it reads
ALIGN = 64

STREAM_DATA = 1
STREAM_VAR = 2
STREAM_NAMES = {STREAM_DATA: "data", STREAM_VAR: "var"}

KIND_TENSOR = 1
KIND_VARIANT = 2
KIND_STREAM = {KIND_TENSOR: STREAM_DATA, KIND_VARIANT: STREAM_VAR}

MARKER = "GRADSTORE"
MAX_KEY_BYTES = 4096

xxh3 = xxhash.xxh3_64_intdigest


def check_magic(buf, magic: bytes, version: int, what: str, where: str) -> None:
    """FormatError unless ``buf`` starts with ``magic`` and a known ``version``."""
    if buf[:len(magic)] != magic:
        raise FormatError(f"{where}: not a gradstore {what} (bad magic)")
    if version not in VERSIONS:
        raise FormatError(f"{where}: {what} format version {version}, this reader knows "
                          f"{', '.join(map(str, VERSIONS))}")


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


# -- segment header ---------------------------------------------------------

SEG_MAGIC = b"GRADSEG\n"
SEG_HEADER = struct.Struct("<8sHHIQ")  # magic, version, stream, seq, created
SEG_HEADER_SIZE = 64


def pack_segment_header(stream: int, seq: int, created_ns: int) -> bytes:
    head = SEG_HEADER.pack(SEG_MAGIC, VERSION, stream, seq, created_ns)
    out = head + struct.pack("<Q", xxh3(head))
    return out + bytes(SEG_HEADER_SIZE - len(out))


def unpack_segment_header(buf: bytes, where: str) -> tuple[int, int]:
    """(stream, seq) of a segment header, or FormatError naming ``where``."""
    if len(buf) < SEG_HEADER_SIZE:
        raise FormatError(f"{where}: truncated segment header ({len(buf)} of 64 bytes)")
    _magic, version, stream, seq, _created = SEG_HEADER.unpack_from(buf)
    check_magic(buf, SEG_MAGIC, version, "segment", where)
    (check,) = struct.unpack_from("<Q", buf, SEG_HEADER.size)
    if check != xxh3(buf[:SEG_HEADER.size]):
        raise FormatError(f"{where}: segment header checksum mismatch")
    return stream, seq


# -- records ----------------------------------------------------------------

REC_MAGIC = b"GSRC"
REC_FIXED = struct.Struct("<4sHHIIQQ")  # magic, version, kind, meta_len, header_len, plen, pxxh
# Version 2 binds a record to its place and its write: the namespace's record
# number n, the segment and offset it was written at, and its place in the
# run of records one write call committed together.
REC_PLACE = struct.Struct("<QQIII4x")    # n, offset, segment seq, run index, run length
REC_FIXED_SIZE = {1: REC_FIXED.size + 8, 2: REC_FIXED.size + REC_PLACE.size + 8}  # + header checksum
MAX_NDIM = 64
MAX_TIME = 2**63 - 1


class RecordHeader(NamedTuple):
    kind: int
    header_len: int
    payload_len: int
    checksum: int
    meta: dict
    version: int = VERSION
    n: int = 0            # version 2: the record's number in its namespace (0: version 1)
    seg: int = -1         # version 2: the segment seq and offset it was written at
    at: int = -1
    run_index: int = 0    # version 2: its place in its write call's run of records
    run_len: int = 1

    @property
    def total(self) -> int:
        """Bytes the record takes in its segment, padding included."""
        return align(self.header_len + self.payload_len)

    @property
    def run_first(self) -> int:
        """The record number of the first record of its run."""
        return self.n - self.run_index


class Place(NamedTuple):
    """Where and as which write a version-2 record is written."""

    n: int
    seg: int
    offset: int
    run_index: int
    run_len: int


def pack_meta(meta: dict) -> bytes:
    """A record's meta map, as its header holds it."""
    return msgpack.packb(meta, use_bin_type=True)


def record_header_len(meta_bytes: bytes) -> int:
    """Length of a record header with this meta, padding included (a multiple of 64)."""
    return align(REC_FIXED_SIZE[VERSION] + len(meta_bytes))


def record_header(kind: int, meta_bytes: bytes, payload_len: int, checksum: int, place: Place) -> bytes:
    """Header bytes of a record, padded so that the payload starts 64-aligned."""
    header_len = record_header_len(meta_bytes)
    fixed = REC_FIXED.pack(REC_MAGIC, VERSION, kind, len(meta_bytes), header_len,
                           payload_len, checksum) \
        + REC_PLACE.pack(place.n, place.offset, place.seg, place.run_index, place.run_len)
    head = fixed + struct.pack("<Q", _header_checksum(fixed, meta_bytes)) + meta_bytes
    return head + bytes(header_len - len(head))


def _header_checksum(fixed: bytes, meta_bytes: bytes) -> int:
    """The header's own checksum: xxh3-64 of its fixed fields and its meta."""
    return xxh3(fixed + meta_bytes)


def unpack_record_header(buf, offset: int, where: str) -> RecordHeader:
    """Parse and check the record header at ``offset`` of ``buf``.

    Raises FormatError (bad magic, version, torn or damaged header, a meta
    that does not describe a storable tensor); the message names ``where``
    and the offset.
    """
    end = len(buf)
    at = f"{where} @ {offset}"
    if offset + REC_FIXED.size > end:
        raise FormatError(f"{at}: truncated record header")
    magic, version, kind, meta_len, header_len, plen, pxxh = REC_FIXED.unpack_from(buf, offset)
    check_magic(magic, REC_MAGIC, version, "record", at)
    fixed_size = REC_FIXED_SIZE[version]
    if header_len != align(fixed_size + meta_len) or offset + header_len > end:
        raise FormatError(f"{at}: truncated or damaged record header")
    check_at = offset + fixed_size - 8
    (hxxh,) = struct.unpack_from("<Q", buf, check_at)
    meta_bytes = bytes(buf[offset + fixed_size:offset + fixed_size + meta_len])
    if _header_checksum(bytes(buf[offset:check_at]), meta_bytes) != hxxh:
        raise FormatError(f"{at}: record header checksum mismatch")
    try:
        meta = msgpack.unpackb(meta_bytes, raw=False)
    except Exception as exc:  # msgpack raises several types
        raise FormatError(f"{at}: unreadable record meta ({exc})") from None
    check_meta(kind, meta, plen, at)
    if version == 1:
        return RecordHeader(kind, header_len, plen, pxxh, meta, 1)
    n, rec_at, seg, run_index, run_len = REC_PLACE.unpack_from(buf, offset + REC_FIXED.size)
    if n == 0 or run_index >= run_len:
        raise FormatError(f"{at}: damaged record header (record number or run)")
    return RecordHeader(kind, header_len, plen, pxxh, meta, 2, n, seg, rec_at, run_index, run_len)


def check_meta(kind: int, meta, payload_len: int, at: str) -> None:
    """FormatError unless a record's meta describes what a reader can serve:
    a valid key, a known dtype, a bounded shape whose bytes are the payload's
    (for tensors), a time in range, and the variant facts of kind 2."""
    from .dtypes import ITEMSIZE
    from .keys import check_key
    if kind not in KIND_STREAM:
        raise FormatError(f"{at}: unknown record kind {kind}")
    if not isinstance(meta, dict):
        raise FormatError(f"{at}: record meta is not a map")
    key, dtype, shape, t = meta.get("key"), meta.get("dtype"), meta.get("shape"), meta.get("time", 0)
    try:
        check_key(key)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{at}: bad key in record meta ({exc})") from None
    if dtype not in ITEMSIZE:
        raise FormatError(f"{at}: {key!r}: unknown dtype {dtype!r}")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(type(d) is int and 0 <= d < 2**63 for d in shape)):
        raise FormatError(f"{at}: {key!r}: bad shape {shape!r}")
    if type(t) is not int or not 0 <= t <= MAX_TIME:
        raise FormatError(f"{at}: {key!r}: bad time {t!r}")
    if kind == KIND_TENSOR:
        count = 1
        for d in shape:
            count *= d
        if count * ITEMSIZE[dtype] != payload_len:
            raise FormatError(f"{at}: {key!r}: shape {shape} of {dtype} is {count * ITEMSIZE[dtype]} "
                              f"bytes, the payload {payload_len}")
    elif not isinstance(meta.get("codec"), str) or not meta["codec"] or "\0" in meta["codec"]:
        raise FormatError(f"{at}: {key!r}: variant record without a codec")


# -- index log ----------------------------------------------------------------

LOG_MAGIC = b"GRADLOG\n"
LOG_HEADER = struct.Struct("<8sII")  # magic, version, generation
LOG_HEADER_SIZE = LOG_HEADER.size  # 16
LOG_FRAME = struct.Struct("<IQ")  # body_len, xxh3(body)


def pack_log_header(generation: int) -> bytes:
    return LOG_HEADER.pack(LOG_MAGIC, VERSION, generation)


def check_log_header(buf: bytes, where: str) -> int:
    if len(buf) < LOG_HEADER_SIZE:
        raise FormatError(f"{where}: truncated index log header")
    _magic, version, generation = LOG_HEADER.unpack_from(buf)
    check_magic(buf, LOG_MAGIC, version, "index log", where)
    return generation


def pack_log_entry(body: list) -> bytes:
    data = msgpack.packb(body, use_bin_type=True)
    return LOG_FRAME.pack(len(data), xxh3(data)) + data


def unpack_log_entries(buf, start: int) -> tuple[list, int, bool]:
    """Complete, intact entries from ``start``; the offset after the last one;
    and whether reading stopped at damage rather than at a torn tail.

    An incomplete last entry is a torn tail (a crash mid-append, or a writer
    still appending). A complete entry whose checksum fails is damage.
    """
    out = []
    pos = start
    end = len(buf)
    frame = LOG_FRAME.size
    while pos + frame <= end:
        n, check = LOG_FRAME.unpack_from(buf, pos)
        body_end = pos + frame + n
        if body_end > end:
            break
        data = bytes(buf[pos + frame:body_end])
        if xxh3(data) != check:
            return out, pos, True
        try:
            body = msgpack.unpackb(data, raw=False, use_list=True)
        except Exception:
            return out, pos, True
        out.append(body)
        pos = body_end
    return out, pos, False


# -- snapshot -----------------------------------------------------------------

SNAP_MAGIC = b"GRADSNAP"
SNAP_HEADER = struct.Struct("<8sIIQQ")  # magic, version, 0, body_len, xxh3(body)


def pack_snapshot(body: dict) -> bytes:
    data = msgpack.packb(body, use_bin_type=True)
    return SNAP_HEADER.pack(SNAP_MAGIC, VERSION, 0, len(data), xxh3(data)) + data


def unpack_snapshot(buf: bytes, where: str) -> dict:
    if len(buf) < SNAP_HEADER.size:
        raise FormatError(f"{where}: truncated snapshot")
    _magic, version, _zero, n, check = SNAP_HEADER.unpack_from(buf)
    check_magic(buf, SNAP_MAGIC, version, "snapshot", where)
    data = memoryview(buf)[SNAP_HEADER.size:]
    if len(data) != n or xxh3(data) != check:
        raise FormatError(f"{where}: snapshot is truncated or damaged")
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
