"""Byte layouts of spec/FORMAT.md: the code twin of that document.

Only packing and unpacking lives here; nothing opens files.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import msgpack
import xxhash

from .errors import FormatError

VERSION = 1
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
    if version != VERSION:
        raise FormatError(f"{where}: {what} format version {version}, this reader knows {VERSION}")


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
REC_FIXED_SIZE = 40  # REC_FIXED (32) + header checksum (8)


class RecordHeader(NamedTuple):
    kind: int
    header_len: int
    payload_len: int
    checksum: int
    meta: dict

    @property
    def total(self) -> int:
        """Bytes the record takes in its segment, padding included."""
        return align(self.header_len + self.payload_len)


def pack_meta(meta: dict) -> bytes:
    """A record's meta map, as its header holds it."""
    return msgpack.packb(meta, use_bin_type=True)


def record_header_len(meta_bytes: bytes) -> int:
    """Length of a record header with this meta, padding included (a multiple of 64)."""
    return align(REC_FIXED_SIZE + len(meta_bytes))


def record_header(kind: int, meta_bytes: bytes, payload_len: int, checksum: int) -> bytes:
    """Header bytes of a record, padded so that the payload starts 64-aligned."""
    header_len = record_header_len(meta_bytes)
    fixed = REC_FIXED.pack(REC_MAGIC, VERSION, kind, len(meta_bytes), header_len,
                           payload_len, checksum)
    head = fixed + struct.pack("<Q", _header_checksum(fixed, meta_bytes)) + meta_bytes
    return head + bytes(header_len - len(head))


def _header_checksum(fixed: bytes, meta_bytes: bytes) -> int:
    """The header's own checksum: xxh3-64 of its fixed fields and its meta."""
    return xxh3(fixed + meta_bytes)


def unpack_record_header(buf, offset: int, where: str) -> RecordHeader:
    """Parse and check the record header at ``offset`` of ``buf``.

    Raises FormatError (bad magic, version, torn or damaged header); the
    message names ``where`` and the offset.
    """
    end = len(buf)
    if offset + REC_FIXED_SIZE > end:
        raise FormatError(f"{where} @ {offset}: truncated record header")
    magic, version, kind, meta_len, header_len, plen, pxxh = REC_FIXED.unpack_from(buf, offset)
    check_magic(magic, REC_MAGIC, version, "record", f"{where} @ {offset}")
    if header_len != align(REC_FIXED_SIZE + meta_len) or offset + header_len > end:
        raise FormatError(f"{where} @ {offset}: truncated or damaged record header")
    (hxxh,) = struct.unpack_from("<Q", buf, offset + REC_FIXED.size)
    meta_start = offset + REC_FIXED_SIZE
    meta_bytes = bytes(buf[meta_start:meta_start + meta_len])
    if _header_checksum(bytes(buf[offset:offset + REC_FIXED.size]), meta_bytes) != hxxh:
        raise FormatError(f"{where} @ {offset}: record header checksum mismatch")
    try:
        meta = msgpack.unpackb(meta_bytes, raw=False)
    except Exception as exc:  # msgpack raises several types
        raise FormatError(f"{where} @ {offset}: unreadable record meta ({exc})") from None
    if not isinstance(meta, dict) or "key" not in meta:
        raise FormatError(f"{where} @ {offset}: record meta lacks a key")
    return RecordHeader(kind, header_len, plen, pxxh, meta)


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
