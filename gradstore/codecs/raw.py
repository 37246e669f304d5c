"""The ``raw`` codec: the bytes as they are, the yardstick for every ratio."""
from __future__ import annotations

import numpy as np

from .bytecodec import ByteCodec, size_mismatch


class RawCodec(ByteCodec):
    """Stores the raw bytes; no parameters."""

    codec_id = "raw"

    def compress(self, data: memoryview) -> bytes:
        return bytes(data)

    def decompress_into(self, payload: memoryview, out: np.ndarray) -> None:
        if len(payload) != out.size:
            raise size_mismatch(self.codec_id, len(payload), out.size)
        out[:] = np.frombuffer(payload, dtype=np.uint8)
