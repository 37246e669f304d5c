"""What the byte-oriented codecs (raw, zlib, zstd) share: they see only the raw bytes.

These are the baselines: lossless for every dtype, blind to what the bytes
mean.  A subclass supplies ``compress`` and ``decompress_into``.
"""
from __future__ import annotations

from abc import abstractmethod

import numpy as np

from ..errors import CodecError
from .codec import Codec, Encoded, as_bytes, element_count


class ByteCodec(Codec):
    """A lossless codec over the little-endian, C-order bytes of an array."""

    lossless = True

    @abstractmethod
    def compress(self, data: memoryview) -> bytes:
        """The payload for these raw bytes."""

    @abstractmethod
    def decompress_into(self, payload: memoryview, out: np.ndarray) -> None:
        """Fill ``out`` (uint8) from the payload; raise CodecError if they disagree."""

    def encode(self, array: np.ndarray) -> Encoded:
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        payload = self.compress(memoryview(raw))
        return Encoded(payload=payload, nbits=8 * len(payload), nsymbols=int(array.size),
                       entropy_bits=None, info={})

    def decode(self, payload, dtype, shape) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = tuple(int(d) for d in shape)
        out = np.empty(element_count(shape) * dtype.itemsize, dtype=np.uint8)
        self.decompress_into(as_bytes(payload), out)
        return out.view(dtype).reshape(shape)


def size_mismatch(codec_id: str, got: int, want: int) -> CodecError:
    """The error for a payload that decodes to the wrong number of bytes."""
    return CodecError(f"{codec_id} payload decodes to {got} bytes, expected {want} "
                      f"(truncated or corrupt payload, or wrong dtype/shape)")
