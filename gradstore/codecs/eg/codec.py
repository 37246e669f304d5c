"""The ``eg`` codec: quantize, then Exp-Golomb code, as in BackSlash (ICML 2025).

Spec: ``eg:k=<0..62|auto>,scale=<float>,sign=<bit|bit-nonzero|zigzag>,remap=<none|rank>,zeros=<plain|run>``
(defaults ``k=0,scale=1e6,sign=bit,remap=none,zeros=plain``: the original coder).

Symbols
-------
A float x becomes q = rint(float64(x) * scale), an int64 (round half to even,
as Python's round()).  Integer and bool inputs are coded directly, q = x,
and losslessly.  |q| must be below 2**62; NaN, Inf and larger values raise
NotEncodableError.  Decoding gives float64(q) * (1 / scale), rounded to the
input dtype (float32/float64 directly; float16/bfloat16 by numpy's astype
from float64).

Each q is turned into an unsigned v and an optional sign bit s:

* ``sign=bit``: v = |q|, then s on every value (0 for q >= 0, 1 for q < 0).
* ``sign=bit-nonzero``: v = |q|, s only when q != 0.
* ``sign=zigzag``: v = 2q for q >= 0, -2q - 1 for q < 0; no s.

``zeros=run``: zeros are not coded as values.  The stream is
``R0 V1 R1 V2 ... Vm Rm``: each non-zero value Vi is preceded by the number
of zeros before it, Ri, as an EG code of order k_run; the last run Rm counts
the trailing zeros (0 if none).  A value is coded as above with v - 1 in
place of v (v >= 1 for a non-zero), and every bit mode writes s.

``remap=rank``: the distinct v (in run mode: of the non-zero values, v - 1)
are sorted by descending count (ties: smaller v first); the rank r of v is
coded instead of v, so the most frequent symbol gets the shortest codeword.
The table of v by rank travels in the stream and counts in its size.

The codeword of a value is EG_k(v) followed by s: with m = v + 2**k of
b bits, EG_k(v) is b - 1 - k zero bits, then m in b bits, MSB first.
For k = 0: 0 -> ``1``, 1 -> ``010``, 2 -> ``011``, 3 -> ``00100``.

Payload layout (format version 1)
---------------------------------
A 40-byte header, all integers little-endian::

    0   2  magic b"EG"
    2   1  version = 1
    3   1  flags: bits 0-1 sign (0 bit, 1 bit-nonzero, 2 zigzag),
               bit 2 remap=rank, bit 3 zeros=run, bit 4 float input; others 0
    4   1  k        order of the value codes
    5   1  k_run    order of the run codes (0 without zeros=run)
    6   1  k_table  order of the table codes (0 without remap=rank)
    7   1  reserved, 0
    8   8  scale    float64 (1.0 for integer input)
    16  8  nsymbols uint64, number of elements
    24  8  table_len uint64, entries in the rank table (0 without remap)
    32  8  nbits    uint64, exact length of the body in bits

then the body, ceil(nbits / 8) bytes: one bit string, MSB of each byte
first, zero-padded to a whole byte.  Without remap the body is the codewords
of the elements in C order (with the runs interleaved in run mode).  With
remap it starts with the table: for i = 0..table_len-1, d = t[i] - t[i-1]
(t[-1] = 0) coded as EG_k_table(|d|), then one sign bit (1 = negative) if
d != 0; the codewords of the ranks follow.

``k=auto`` takes the order with the fewest bits for this very tensor (the
smallest on ties), computed exactly from its histogram; k_run and k_table
are always chosen that way.  Codewords are at most 128 bits long.

``Encoded.nbits`` is the body's length: codewords plus table; the fixed
header is not counted.  For k=0, sign=bit it is exactly the bit count of the
original coder (tools/eg_reference.py) wherever that one's int32 did not
wrap around.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from ... import dtypes
from ...errors import CodecError
from . import read as R
from ..stats import error_sums
from ..codec import Codec, Encoded, Param, as_bytes, choice, element_count, integer_or, positive_real
from .bits import KMAX
from .passes import CHUNK, Output, Source, is_float as _is_float
from .plan import fixed_plan, make_plan

HEADER = struct.Struct("<2sBBBBBBdQQQ")
MAGIC = b"EG"
VERSION = 1
SIGNS = ("bit", "bit-nonzero", "zigzag")
FLAG_REMAP, FLAG_RUNS, FLAG_FLOAT = 4, 8, 16

_MESSAGES = {
    R.ERR_TRUNCATED: "bitstream ends before the last symbol (truncated payload)",
    R.ERR_CODEWORD: "invalid codeword (more than 63 leading zeros)",
    R.ERR_NEGATIVE_ZERO: "sign bit set on a zero",
    R.ERR_RANK: "rank beyond the end of the table",
    R.ERR_RUN: "zero run longer than the tensor",
}


class EGCodec(Codec):
    """Exp-Golomb coding of quantized values; lossy for floats, lossless for integers."""

    codec_id = "eg"
    lossless = False
    PARAMS = {
        "k": Param(0, integer_or("auto", 0, KMAX), f"an integer 0..{KMAX} or auto"),
        "scale": Param(1e6, positive_real, "a finite number > 0"),
        "sign": Param("bit", choice(*SIGNS), " | ".join(SIGNS)),
        "remap": Param("none", choice("none", "rank"), "none | rank"),
        "zeros": Param("plain", choice("plain", "run"), "plain | run"),
    }

    def is_lossless(self, dtype: np.dtype) -> bool:
        return not _is_float(np.dtype(dtype))

    @property
    def _flags(self) -> int:
        p = self._params
        return (SIGNS.index(p["sign"]) | (FLAG_REMAP if p["remap"] == "rank" else 0)
                | (FLAG_RUNS if p["zeros"] == "run" else 0))

    def encode(self, array: np.ndarray) -> Encoded:
        array = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        source = Source(array, self._params["scale"])
        k, sign = self._params["k"], SIGNS.index(self._params["sign"])
        runs, remap = self._params["zeros"] == "run", self._params["remap"] == "rank"
        if isinstance(k, int) and not (runs or remap):  # one pass: codewords need no histogram
            out = Output(HEADER.size, source.estimate_bits(k, sign))
            plan = fixed_plan(source.scan_and_write(k, sign, out), k=k, sign=sign)
        else:
            plan = make_plan(source.scan(runs), k=k, sign=sign, remap=remap, runs=runs)
            out = Output(HEADER.size, plan.nbits)
            source.write(plan, runs, out)
        buf, nbits = out.finish()
        if nbits != plan.nbits:  # a bug, never the data: the plan and the writer disagree
            raise AssertionError(f"eg wrote {nbits} bits where the plan said {plan.nbits}")
        flags = self._flags | (FLAG_FLOAT if source.is_float else 0)
        HEADER.pack_into(buf, 0, MAGIC, VERSION, flags, plan.k, plan.k_run,
                         plan.k_table, 0, source.scale, array.size, plan.table.size, plan.nbits)
        payload = buf[:HEADER.size + (plan.nbits + 7) // 8].tobytes()
        info = {"k": plan.k, "table_len": int(plan.table.size), "table_bits": plan.table_bits,
                "header_bytes": HEADER.size}
        if runs:
            info.update(k_run=plan.k_run, run_bits=plan.run_bits)
        return Encoded(payload=payload, nbits=plan.nbits, nsymbols=int(array.size),
                       entropy_bits=plan.entropy_bits, info=info)

    def decode(self, payload, dtype, shape) -> np.ndarray:
        return self._decode(payload, np.dtype(dtype), tuple(int(d) for d in shape), None)

    def decode_compared(self, payload, raw: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float] | None]:
        """decode(payload, raw.dtype, raw.shape), and the error sums of the result against
        ``raw`` (as stats.error_sums; None if it takes no such dtype), each chunk
        compared as soon as it is decoded, while it is in cache."""
        raw = np.asarray(raw)
        sums = [0.0, 0.0, 0.0]
        out = self._decode(payload, raw.dtype, raw.shape, (np.ascontiguousarray(raw).reshape(-1), sums))
        return out, (None if sums[0] is None else tuple(sums))

    def _decode(self, payload, dtype: np.dtype, shape: tuple, compare: tuple | None) -> np.ndarray:
        """decode(); with ``compare`` = (raw, sums), raw flat, each chunk's error sums are
        added to the list ``sums`` (which becomes [None, ...] if error_sums takes no such dtype)."""
        ref, sums = compare if compare is not None else (None, None)
        data = as_bytes(payload)
        flags, k, k_run, k_table, scale, n, table_len, nbits = \
            self._read_header(data, dtype, element_count(shape))
        size = len(data) - HEADER.size
        body = np.empty(size + 32, dtype=np.uint8)  # the readers look up to 25 bytes past the end
        body[:size] = np.frombuffer(data, np.uint8, offset=HEADER.size)
        body[size:] = 0
        table, pos = np.zeros(0, dtype=np.uint64), 0
        if flags & FLAG_REMAP:
            table, pos, ok = R.read_table(body, nbits, table_len, k_table)
            if not ok or pos > nbits:
                raise CodecError("corrupt eg payload: bad rank table")
        runs = bool(flags & FLAG_RUNS)
        state = np.array([pos, 0, 1, n, 0], dtype=np.int64)
        out = np.empty(n, dtype=dtype)
        for start, target in _targets(out, chunked=ref is not None):
            R.read(body, nbits, target, bool(flags & FLAG_FLOAT), 1.0 / scale, k, flags & 3,
                   bool(flags & FLAG_REMAP), table, k_run if runs else None, state)
            if state[4]:
                raise CodecError(f"corrupt eg payload: {_MESSAGES[int(state[4])]} "
                                 f"(element {n - int(state[3])}, bit {int(state[0])})")
            done = out[start:start + target.size]
            if target.base is not out:
                _narrow(target, done)
            if ref is not None and sums[0] is not None:
                _add_error_sums(sums, error_sums(ref[start:start + target.size], done))
        pos = int(state[0])
        if pos <= nbits and runs and state[2]:  # a final run of no zeros must follow
            last, pos, ok = R.read_eg(body, pos, k_run)
            if not ok or last != 0:
                raise CodecError("corrupt eg payload: bad final zero run")
        if pos != nbits:
            raise CodecError(f"corrupt eg payload: symbols end at bit {pos}, the body has {nbits}"
                             f"{' (truncated payload)' if pos > nbits else ''}")
        return out.reshape(shape)

    def _read_header(self, data: memoryview, dtype: np.dtype, n: int) -> tuple:
        """Check the header against this codec, the dtype, the shape and the length."""
        if len(data) < HEADER.size:
            raise CodecError(f"eg payload of {len(data)} bytes is shorter than its "
                             f"{HEADER.size}-byte header (truncated)")
        magic, version, flags, k, k_run, k_table, reserved, scale, nsym, table_len, nbits = \
            HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            raise CodecError(f"not an eg payload: magic {bytes(magic)!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise CodecError(f"eg payload has format version {version}; this reader knows {VERSION}")
        if reserved or flags & ~31 or (flags & 3) == 3 or max(k, k_run, k_table) > KMAX:
            raise CodecError("corrupt eg payload: bad header fields")
        if flags & ~FLAG_FLOAT != self._flags:
            raise CodecError(f"eg payload was written with other parameters than {self.spec}")
        if isinstance(self._params["k"], int) and k != self._params["k"]:
            raise CodecError(f"eg payload was written with k={k}, this codec has k={self._params['k']}")
        is_float = _is_float(dtype)
        if bool(flags & FLAG_FLOAT) != is_float or (is_float and scale != self._params["scale"]):
            raise CodecError(f"eg payload does not match dtype {dtype} / scale {self._params['scale']!r}"
                             f" (payload: {'float' if flags & FLAG_FLOAT else 'integer'}, scale {scale!r})")
        if nsym != n:
            raise CodecError(f"eg payload holds {nsym} elements, the shape asks for {n}")
        want = HEADER.size + (nbits + 7) // 8
        if len(data) != want:
            raise CodecError(f"eg payload is {len(data)} bytes, its header says {want} "
                             f"({'truncated' if len(data) < want else 'trailing bytes'})")
        if table_len > nbits or (table_len and not flags & FLAG_REMAP):
            raise CodecError(f"corrupt eg payload: table of {table_len} entries in {nbits} bits")
        if nbits % 8 and data[want - 1] & (0xFF >> (nbits % 8)):
            raise CodecError("corrupt eg payload: padding bits are not zero")
        return flags, k, k_run, k_table, scale, nsym, table_len, nbits


def _targets(out: np.ndarray, chunked: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Where read() writes: (views of) ``out`` if it can, else chunk buffers to narrow;
    chunks small enough to stay in cache until they are narrowed or compared."""
    chunk = min(CHUNK, 1 << 16)
    if dtypes.name_of(out.dtype) in ("float32", "float64", "int64"):
        if not chunked:
            yield 0, out[:]
            return
        for start in range(0, out.size, chunk):
            yield start, out[start:start + chunk]
        return
    buf = np.empty(min(chunk, out.size), np.float64 if _is_float(out.dtype) else np.int64)
    for start in range(0, out.size, chunk):
        yield start, buf[:min(chunk, out.size - start)]


_NARROWED = {"float16": R.HALF, "bfloat16": R.BFLOAT}   # narrowed by read.narrow, as numpy would


def _add_error_sums(sums: list, more: tuple | None) -> None:
    if more is None:
        sums[0] = None
    else:
        sums[:] = max(sums[0], more[0]), sums[1] + more[1], sums[2] + more[2]


def _narrow(values: np.ndarray, dest: np.ndarray) -> None:
    """dest[:] = decoded float64/int64 ``values`` as dest's dtype; CodecError if an integer
    does not fit."""
    if values.dtype.kind == "f":
        name = dtypes.name_of(dest.dtype)
        if name in _NARROWED:
            R.narrow(values, dest.view(np.uint16), *_NARROWED[name])
        else:
            dest[:] = values
        return
    if values.size:
        info = np.iinfo(np.uint8 if dest.dtype == np.bool_ else dest.dtype)
        top = 1 if dest.dtype == np.bool_ else info.max
        lo, hi = int(values.min()), int(values.max())
        if lo < info.min or hi > top:
            raise CodecError(f"corrupt eg payload: decoded value {lo if lo < info.min else hi} "
                             f"does not fit {dest.dtype}")
    dest[:] = values
