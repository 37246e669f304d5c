"""Checks every codec must pass, for the built-ins' tests and for plug-in authors.

A plug-in package can run ``check_codec(MyCodec())`` in its own test suite
and get the same guarantees the store relies on: the spec rebuilds an equal
codec, every dtype and shape round-trips (bit-exactly when lossless), and a
truncated payload raises CodecError instead of returning garbage.
"""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes
from ..errors import CodecError
from .codec import Codec, Encoded
from .registry import get_codec


def sample_arrays(seed: int = 0) -> list[np.ndarray]:
    """Small arrays of every gradstore dtype, plus 0-d, empty and 2-d ones."""
    rng = np.random.default_rng(seed)
    arrays = []
    for name in dtypes.NAMES:
        dtype = dtypes.to_numpy(name)
        if name == "bool":
            values = rng.random(37) < 0.3
        elif name.startswith(("int", "uint")):
            info = np.iinfo(dtype)
            values = rng.integers(max(info.min, -1000), min(info.max, 1000), 37, endpoint=True)
        else:
            values = rng.laplace(size=37) * 1e-3
        arrays.append(np.ascontiguousarray(values.astype(dtype)))
    arrays += [np.array(0.25, dtype=np.float32), np.zeros(0, dtype=np.float32),
               np.zeros((0, 3), dtype=np.int16), rng.standard_normal((3, 5)).astype(np.float64)]
    return arrays


def check_encoded(encoded: Encoded, array: np.ndarray) -> None:
    """The Encoded invariants the store relies on."""
    assert isinstance(encoded.payload, bytes), type(encoded.payload)
    assert encoded.nsymbols == array.size, (encoded.nsymbols, array.size)
    assert 0 <= encoded.nbits and len(encoded.payload) >= math.ceil(encoded.nbits / 8)
    assert encoded.entropy_bits is None or encoded.entropy_bits >= 0
    assert isinstance(encoded.info, dict)


def check_roundtrip(codec: Codec, array: np.ndarray) -> np.ndarray:
    """Encode then decode ``array`` from bytes, memoryview and uint8 array; returns the result.

    Lossless codecs must give back the very bits; lossy ones the dtype and shape.
    """
    encoded = codec.encode(array)
    check_encoded(encoded, array)
    results = [codec.decode(payload, array.dtype, array.shape)
               for payload in (encoded.payload, memoryview(encoded.payload),
                               np.frombuffer(encoded.payload, dtype=np.uint8))]
    for out in results:
        assert out.dtype == array.dtype and out.shape == array.shape, (out.dtype, out.shape)
        assert out.tobytes() == results[0].tobytes()
    if codec.is_lossless(array.dtype):
        assert results[0].tobytes() == array.tobytes(), f"{codec.spec} lost bits of a {array.dtype} array"
    return results[0]


def check_truncation(codec: Codec, array: np.ndarray) -> None:
    """Every proper prefix of a payload that decodes must raise CodecError (last bytes checked)."""
    payload = codec.encode(array).payload
    for cut in range(max(0, len(payload) - 8), len(payload)):
        try:
            codec.decode(payload[:cut], array.dtype, array.shape)
        except CodecError:
            continue
        raise AssertionError(f"{codec.spec}: payload cut to {cut} of {len(payload)} bytes decoded")


def check_codec(codec: Codec) -> None:
    """Run every check on ``codec`` over sample_arrays()."""
    assert get_codec(codec.spec) == codec, "the spec must rebuild an equal codec"
    for array in sample_arrays():
        check_roundtrip(codec, array)
        check_truncation(codec, array)
