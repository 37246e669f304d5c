"""raw, zlib and zstd: lossless baselines over the raw bytes."""
from __future__ import annotations

import numpy as np
import pytest

from gradstore.codecs import get_codec
from gradstore.codecs.testing import check_codec, sample_arrays
from gradstore.errors import CodecError

SPECS = ["raw", "zlib:level=0", "zlib", "zlib:level=9", "zstd:level=-7", "zstd", "zstd:level=19"]


@pytest.mark.parametrize("spec", SPECS)
def test_codec_checks(spec):
    check_codec(get_codec(spec))


@pytest.mark.parametrize("spec", SPECS)
def test_sizes_are_reported_in_bits(spec):
    x = sample_arrays()[0]
    encoded = get_codec(spec).encode(x)
    assert encoded.nbits == 8 * len(encoded.payload) and encoded.nsymbols == x.size
    if spec == "raw":
        assert encoded.payload == x.tobytes()


@pytest.mark.parametrize("spec", ["zlib", "zstd"])
def test_corrupt_payloads(spec):
    codec = get_codec(spec)
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    payload = bytearray(codec.encode(x).payload)
    payload[len(payload) // 2] ^= 0xFF
    with pytest.raises(CodecError, match=f"corrupt {spec} payload"):
        codec.decode(bytes(payload), x.dtype, x.shape)
    with pytest.raises(CodecError, match="truncated"):
        codec.decode(codec.encode(x).payload[:-3], x.dtype, x.shape)


@pytest.mark.parametrize("spec", ["raw", "zlib", "zstd"])
def test_wrong_shape_or_dtype(spec):
    codec = get_codec(spec)
    x = np.arange(10, dtype=np.float32)
    payload = codec.encode(x).payload
    with pytest.raises(CodecError, match="decodes to 40 bytes, expected 44"):
        codec.decode(payload, np.float32, (11,))
    with pytest.raises(CodecError, match="expected 80"):
        codec.decode(payload, np.float64, (10,))
