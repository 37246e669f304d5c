"""The ``zipnn`` codec: ZipNN (exponent Huffman plus byte grouping) as a contender in reports.

Used only when the optional ``zipnn`` package is installed; otherwise
encoding or decoding says so in one CodecError.  ZipNN claims to be
lossless, so the store checks it like any lossless codec: ``gs.encode`` and
``gs.sizes`` decode every payload and report a round trip that does not give
back the input bytes as a CodecError, never as a size.

Spec: ``zipnn:threads=<1..64>`` (default 1, so speeds compare per core).
The payload is ZipNN's own output, unchanged.  float16, bfloat16 and
float32 only; other dtypes are not encodable.
"""
from __future__ import annotations

import numpy as np

from ..dtypes import known_name
from ..errors import CodecError, NotEncodableError
from .codec import Codec, Encoded, Param, as_bytes, element_count, integer

DTYPES = ("float16", "bfloat16", "float32")   # the dtype names zipnn codes


def _zipnn(dtype: np.dtype, threads: int):
    try:
        from zipnn import ZipNN
    except ImportError:
        raise CodecError("codec 'zipnn': the zipnn package is not installed "
                         "(pip install zipnn)") from None
    return ZipNN(input_format="byte", bytearray_dtype=known_name(dtype), threads=threads)


class ZipnnCodec(Codec):
    """ZipNN's compress/decompress over the raw bytes of a float tensor."""

    codec_id = "zipnn"
    lossless = True
    PARAMS = {"threads": Param(1, integer(1, 64), "an integer 1..64")}

    def encode(self, array: np.ndarray) -> Encoded:
        array = np.ascontiguousarray(array)
        if known_name(array.dtype) not in DTYPES:
            raise NotEncodableError(f"zipnn codes float16, bfloat16 and float32, not {array.dtype}")
        if array.size == 0:
            return Encoded(b"", 0, 0, None, {})
        codec = _zipnn(array.dtype, self._params["threads"])
        payload = bytes(codec.compress(array.reshape(-1).view(np.uint8).tobytes()))
        return Encoded(payload, 8 * len(payload), int(array.size), None, {})

    def decode(self, payload, dtype, shape) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = tuple(int(d) for d in shape)
        if known_name(dtype) not in DTYPES:
            raise CodecError(f"zipnn payloads hold float16, bfloat16 or float32, not {dtype}")
        data = as_bytes(payload)
        want = element_count(shape) * dtype.itemsize
        if want == 0:
            if len(data):
                raise CodecError(f"zipnn payload of {len(data)} bytes for an empty array")
            return np.empty(shape, dtype=dtype)
        codec = _zipnn(dtype, self._params["threads"])
        try:
            raw = bytes(codec.decompress(bytes(data)))
        except Exception as exc:  # zipnn raises anything on bad input
            raise CodecError(f"corrupt zipnn payload: {type(exc).__name__}: {exc}") from None
        if len(raw) != want:
            raise CodecError(f"zipnn payload decodes to {len(raw)} bytes, expected {want} "
                             f"(truncated or corrupt payload, or wrong dtype/shape)")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
