"""zipnn adapter: a clear error without the package, round trips with it, failures reported."""
from __future__ import annotations

import sys

import ml_dtypes
import numpy as np
import pytest

from gradstore.codecs import get_codec
from gradstore.codecs.testing import check_roundtrip
from gradstore.errors import CodecError, NotEncodableError
from gradstore.variants import trial

FLOATS = [np.float32, np.float16, ml_dtypes.bfloat16]


def grads(dtype, n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.laplace(size=n) * 1e-3
    x[: n // 4] = 0.0
    return x.astype(dtype)


def test_not_installed_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "zipnn", None)      # import zipnn now raises ImportError
    codec = get_codec("zipnn")
    with pytest.raises(CodecError, match="zipnn package is not installed"):
        codec.encode(grads(np.float32))
    with pytest.raises(CodecError, match="zipnn package is not installed"):
        codec.decode(b"\0" * 64, np.float32, (10,))


def test_other_dtypes_are_not_encodable():
    with pytest.raises(NotEncodableError, match="not int32"):
        get_codec("zipnn").encode(np.arange(4, dtype=np.int32))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_round_trip_when_installed(dtype):
    pytest.importorskip("zipnn")
    codec = get_codec("zipnn")
    check_roundtrip(codec, grads(dtype))
    check_roundtrip(codec, np.zeros(0, dtype))


def test_garbage_is_a_codec_error():
    pytest.importorskip("zipnn")
    with pytest.raises(CodecError, match="zipnn payload"):
        get_codec("zipnn").decode(b"\x01\x02\x03" * 20, np.float32, (100,))


def test_a_round_trip_that_loses_bits_is_reported(monkeypatch):
    """The store decodes every payload: a zipnn that gives back other bytes fails, with no size."""
    zipnn = pytest.importorskip("zipnn")
    real = zipnn.ZipNN.decompress

    def lossy(self, data):
        out = bytearray(real(self, data))
        out[5] ^= 1
        return bytes(out)

    monkeypatch.setattr(zipnn.ZipNN, "decompress", lossy)
    with pytest.raises(CodecError, match="did not round-trip"):
        trial(get_codec("zipnn"), grads(np.float32))
