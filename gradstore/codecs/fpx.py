"""The ``fpx`` codec: lossless floats, the exponent entropy-coded per chunk, the rest raw.

Spec: ``fpx:chunk=<4096..16777216>`` (default ``chunk=65536`` values).

Why this split: in a gradient the sign and the low mantissa bits are close
to uniform noise, while the exponent has a few bits of entropy, and a
bucket holds many exact zeros (embedding rows no token touched), often in
long runs.  So each value becomes a symbol, coded with rANS, plus raw bytes:

* a non-zero value (any pattern whose bits other than the sign are not all
  zero: subnormals, Inf and NaN payloads included) has for symbol the 8 bits
  after its sign, and W - 8 raw bits: the sign, then the W - 9 low bits;
* +0 and -0 have the symbols 256 and 257 and no raw bits.

The 8 symbol bits are the exponent of float32 and bfloat16, the exponent
and top 3 mantissa bits of float16, the top 8 of the 11 exponent bits of
float64; the raw part is then whole bytes (3, 1, 1, 7).  Measured on real
gradients, more mantissa bits in the symbol gain under 0.2%.  Other dtypes
are stored raw (dtype code 0).

Each symbol is coded in one of two contexts, whether the value four
positions before it (in its chunk) is a zero, so that runs of zeros cost
almost nothing; four back rather than one, so that the four interleaved rANS
states decode independently (a chain through every symbol decoded at half
the speed, measured).  Every chunk of ``chunk`` values has its own
frequency tables, so a bucket that mixes modules of different scales gets
local models, and chunks can be coded independently.  ``Encoded.entropy_bits``
is the bound of this model: the order-0 entropy of the symbols per chunk and
context, plus the raw bits.

Payload layout (version 1), integers little-endian::

    0   2  magic b"FX"
    2   1  version = 1
    3   1  dtype code: 0 raw bytes, 1 float16, 2 bfloat16, 3 float32, 4 float64
    4   1  symbol bits = 8
    5   1  scale: each table's frequencies sum to 2**scale (12)
    6   2  reserved, 0
    8   8  n, number of elements
    16  4  chunk, values per chunk
    20  4  reserved, 0
    24  8  xxh3_64 of every byte after this header

then, for each of the ceil(n / chunk) chunks, three uint32: the byte
lengths of its tables, rANS and raw parts; then each chunk's three parts.
Tables: for context 0 (four back is a non-zero value, or before the chunk's
start), then context 1 (four back is a zero): a varint count of present
symbols, then per symbol, ascending, the varint gap from the previous one
(minus one) and the varint frequency - 1; a context with no symbol has the table {0: 2**scale}.
rANS (states in [2**15, 2**31), 16-bit words, state j codes the positions
i with i % 4 == j, all four starting and ending at 2**15): states
0 to 3 as uint32, then the words in decoding order.  Raw: the (W - 8) / 8
bytes of each non-zero value, in order, little-endian.
Dtype code 0: the raw bytes of the array follow the header.
"""
from __future__ import annotations

import struct

import numpy as np
import xxhash

from ..dtypes import known_name
from ..errors import CodecError
from . import fpx_decode, fpx_encode
from . import fpx_kernels as K
from .codec import Codec, Encoded, Param, as_bytes, element_count, integer

MAGIC = b"FX"
VERSION = 1
HEADER = struct.Struct("<2sBBBBHQII8s")     # 32 bytes
# dtype -> (code, lane dtype the kernels see, bits per value)
FLOATS = {    # by dtype name (gradstore.dtypes)
    "float16": (1, np.uint16, 16),
    "bfloat16": (2, np.uint16, 16),
    "float32": (3, np.uint32, 32),
    "float64": (4, np.int64, 64),
}
ERRORS = {K.E_TABLE: "bad frequency table", K.E_RANS: "rANS stream does not decode",
          K.E_RAW: "raw bits do not match the symbols", K.E_SIZES: "chunk sizes exceed the payload"}


def _digest(body) -> bytes:
    return xxhash.xxh3_64_digest(body)


def _model_bits(counts: np.ndarray, W: int) -> float:
    """The bound of the model fpx uses: order-0 entropy per chunk and context, plus the raw bits."""
    c = counts.reshape(-1, counts.shape[-1]).astype(np.float64)
    totals = c.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(c > 0, c * np.log2(totals / np.where(c > 0, c, 1)), 0.0)
    return float(terms.sum() + c[:, :K.ZERO].sum() * (W - K.T))


class FpxCodec(Codec):
    """Sign/exponent/mantissa split, per-chunk rANS on the exponents; lossless for every dtype."""

    codec_id = "fpx"
    lossless = True
    PARAMS = {"chunk": Param(65536, integer(4096, 1 << 24), "an integer 4096..16777216")}

    def encode(self, array: np.ndarray) -> Encoded:
        array = np.ascontiguousarray(array)
        n = int(array.size)
        chunk = self._params["chunk"]
        layout = FLOATS.get(known_name(array.dtype))
        if layout is None or n == 0:
            body = array.reshape(-1).view(np.uint8).tobytes()
            header = HEADER.pack(MAGIC, VERSION, 0, 0, K.SCALE, 0, n, chunk, 0, _digest(body))
            payload = header + body
            return Encoded(payload, 8 * len(payload), n, 8.0 * len(body), {"chunks": 0})
        code, lane, W = layout
        u = array.reshape(-1).view(lane)
        nchunks = -(-n // chunk)
        # at most one rANS word per value, its raw bytes; per chunk 4 states and 2 tables
        bound = n * (2 + (W - K.T) // 8) + nchunks * (4 * K.NS + K.CTX * (2 + 4 * K.A))
        start = HEADER.size + 12 * nchunks
        out = np.empty(start + bound, dtype=np.uint8)
        sizes = np.zeros((nchunks, 3), dtype=np.int64)
        counts = np.zeros((nchunks, K.CTX, K.A), dtype=np.int64)
        end = start + fpx_encode.encode(u, chunk, out[start:], sizes, counts)
        out[HEADER.size:start] = np.frombuffer(sizes.astype("<u4").tobytes(), dtype=np.uint8)
        out[:HEADER.size] = np.frombuffer(HEADER.pack(
            MAGIC, VERSION, code, K.T, K.SCALE, 0, n, chunk, 0, _digest(out[HEADER.size:end])), dtype=np.uint8)
        payload = out[:end].tobytes()
        info = {"chunks": nchunks, "table_bytes": int(sizes[:, 0].sum()),
                "rans_bytes": int(sizes[:, 1].sum()), "raw_bytes": int(sizes[:, 2].sum())}
        return Encoded(payload, 8 * len(payload), n, _model_bits(counts, W), info)

    def decode(self, payload, dtype, shape) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = tuple(int(d) for d in shape)
        n = element_count(shape)
        buf = np.frombuffer(as_bytes(payload), dtype=np.uint8)
        if len(buf) < HEADER.size:
            raise CodecError(f"fpx payload is truncated: {len(buf)} bytes, header needs {HEADER.size}")
        magic, version, code, T, scale, _, count, chunk, _, digest = HEADER.unpack_from(buf)
        if magic != MAGIC or version != VERSION:
            raise CodecError(f"not an fpx version {VERSION} payload (magic {magic!r}, version {version})")
        body = buf[HEADER.size:]
        if _digest(body) != digest:
            raise CodecError("corrupt fpx payload: checksum mismatch (truncated or damaged)")
        layout = FLOATS.get(known_name(dtype))
        want = layout[0] if layout is not None and n else 0
        if count != n or code != want:
            raise CodecError(f"fpx payload holds {count} values of dtype code {code}, "
                             f"expected {n} of {dtype} (wrong dtype/shape)")
        if code == 0:
            if len(body) != n * dtype.itemsize:
                raise CodecError(f"fpx payload holds {len(body)} raw bytes, expected {n * dtype.itemsize}")
            return body.copy().view(dtype).reshape(shape)
        _, lane, _ = layout
        if T != K.T or scale != K.SCALE or not 4096 <= chunk <= 1 << 24:
            raise CodecError(f"corrupt fpx payload: symbol bits {T}, scale {scale}, chunk {chunk}")
        nchunks = -(-n // chunk)
        if len(body) < 12 * nchunks:
            raise CodecError("corrupt fpx payload: chunk directory is cut short")
        sizes = body[:12 * nchunks].view("<u4").reshape(nchunks, 3).astype(np.int64)
        if int(sizes.sum()) != len(body) - 12 * nchunks:
            raise CodecError("corrupt fpx payload: chunk sizes do not add up to its length")
        out = np.empty(n, dtype=lane)
        status = fpx_decode.decode(body, 12 * nchunks, sizes, n, chunk, out)
        if status:
            raise CodecError(f"corrupt fpx payload: {ERRORS.get(status, status)}")
        return out.view(dtype).reshape(shape)
