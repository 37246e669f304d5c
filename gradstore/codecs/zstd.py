"""The ``zstd`` codec: the general-purpose compressor a specialised coder must beat."""
from __future__ import annotations

import numpy as np
import zstandard

from ..errors import CodecError
from .bytecodec import ByteCodec, size_mismatch
from .codec import Param, integer


class ZstdCodec(ByteCodec):
    """One zstd frame with content size and checksum, so corruption is caught."""

    codec_id = "zstd"
    PARAMS = {"level": Param(3, integer(-7, 22), "an integer -7..22")}

    def compress(self, data: memoryview) -> bytes:
        return zstandard.ZstdCompressor(level=self._params["level"],
                                        write_checksum=True).compress(data)

    def decompress_into(self, payload: memoryview, out: np.ndarray) -> None:
        stream = zstandard.ZstdDecompressor().decompressobj()
        try:  # a whole frame must arrive: eof is set only after its checksum matched
            data = stream.decompress(payload)
        except zstandard.ZstdError as exc:
            raise CodecError(f"corrupt zstd payload: {exc}") from None
        if not stream.eof or stream.unused_data:
            raise CodecError("zstd payload is truncated or has trailing bytes")
        if len(data) != out.size:
            raise size_mismatch(self.codec_id, len(data), out.size)
        out[:] = np.frombuffer(data, dtype=np.uint8)
