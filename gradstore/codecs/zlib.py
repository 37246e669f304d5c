"""The ``zlib`` codec: "zip of the original", the baseline people quote."""
from __future__ import annotations

import zlib

import numpy as np

from ..errors import CodecError
from .bytecodec import ByteCodec, size_mismatch
from .codec import Param, integer


class ZlibCodec(ByteCodec):
    """DEFLATE in a zlib stream (with its Adler-32) over the raw bytes."""

    codec_id = "zlib"
    PARAMS = {"level": Param(6, integer(0, 9), "an integer 0..9")}

    def compress(self, data: memoryview) -> bytes:
        return zlib.compress(data, self._params["level"])

    def decompress_into(self, payload: memoryview, out: np.ndarray) -> None:
        stream = zlib.decompressobj()
        try:
            data = stream.decompress(payload, out.size + 1)
        except zlib.error as exc:
            raise CodecError(f"corrupt zlib payload: {exc}") from None
        if not stream.eof or stream.unused_data or stream.unconsumed_tail:
            raise CodecError("zlib payload is truncated or has trailing bytes")
        if len(data) != out.size:
            raise size_mismatch(self.codec_id, len(data), out.size)
        out[:] = np.frombuffer(data, dtype=np.uint8)
