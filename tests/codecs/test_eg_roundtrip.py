"""eg round trips: every mode, order, dtype and shape decodes to exactly what it promised."""
from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gradstore.codecs import get_codec
from gradstore.codecs.eg import codec as eg
from gradstore.codecs.eg import passes as eg_passes
from gradstore.codecs.stats import int_entropy_bits
from gradstore.codecs.testing import check_codec, check_roundtrip
from gradstore.errors import CodecError, NotEncodableError

FLOATS = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]
INTS = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]
MODES = [f"sign={s},remap={r},zeros={z}" for s, r, z in
         itertools.product(["bit", "bit-nonzero", "zigzag"], ["none", "rank"], ["plain", "run"])]


def gradients(n: int, seed: int = 0, zeros: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.laplace(size=n) * 10.0 ** rng.uniform(-5, -2, size=n)
    x[rng.random(n) < zeros] = 0.0
    return x


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", ["0", "2", "auto"])
def test_every_mode_passes_the_codec_checks(mode, k):
    check_codec(get_codec(f"eg:k={k},{mode}"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_floats_decode_to_the_dequantized_values(mode, dtype, dequantized):
    x = gradients(5000).astype(dtype)
    for spec in (f"eg:k=auto,scale=1e6,{mode}", f"eg:k=5,scale=3e4,{mode}"):
        codec = get_codec(spec)
        out = check_roundtrip(codec, x)
        assert np.array_equal(out, dequantized(x, codec.params["scale"]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", INTS, ids=lambda d: np.dtype(d).name)
def test_integers_are_lossless(mode, dtype):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if dtype != np.bool_ else None
    if info is None:
        x = rng.random(3000) < 0.2
    else:
        x = rng.integers(max(info.min, 1 - 2**62), min(info.max, 2**62 - 1), 3000, endpoint=True,
                         dtype=dtype)
        x[::3] = 0
        x[1::7] = rng.integers(0, 5, x[1::7].size).astype(dtype)
    out = check_roundtrip(get_codec(f"eg:k=auto,{mode}"), x)
    assert np.array_equal(out, x)


@pytest.mark.parametrize("k", [0, 1, 7, 20, 62])
def test_orders_including_the_largest(k):
    x = np.array([0, 1, -1, 2**40, -(2**61), 2**62 - 1, 12345], dtype=np.int64)
    for mode in ("sign=bit", "sign=zigzag,remap=rank", "sign=bit-nonzero,zeros=run"):
        assert np.array_equal(check_roundtrip(get_codec(f"eg:k={k},{mode}"), x), x)


def test_empty_and_zero_d():
    codec = get_codec("eg:k=auto,zeros=run,remap=rank")
    for x in (np.zeros(0, np.float32), np.zeros((3, 0, 2), ml_dtypes.bfloat16),
              np.array(-0.5, np.float16), np.array(7, np.uint8)):
        out = check_roundtrip(codec, x)
        assert out.shape == x.shape
    assert codec.encode(np.zeros(0, np.float32)).entropy_bits == 0.0


def test_auto_order_is_the_smallest_fixed_order():
    x = gradients(20000, seed=5, zeros=0.05).astype(np.float32)
    for mode in ("sign=bit", "sign=zigzag,remap=rank", "sign=bit-nonzero,zeros=run"):
        auto = get_codec(f"eg:k=auto,{mode}").encode(x)
        fixed = {k: get_codec(f"eg:k={k},{mode}").encode(x).nbits for k in range(0, 25)}
        assert auto.nbits == min(fixed.values())
        assert fixed[auto.info["k"]] == auto.nbits


def test_rank_remap_gives_frequent_symbols_short_codes():
    # 1000 is the most frequent value: EG-0 spends 21 bits on it, after remap it is rank 0.
    x = np.where(np.arange(10000) % 10 == 0, np.arange(10000) % 7, 1000).astype(np.int64)
    plain = get_codec("eg:k=0").encode(x)
    ranked = get_codec("eg:k=0,remap=rank").encode(x)
    values, counts = np.unique(x, return_counts=True)
    order = np.lexsort((values, -counts))                  # by count, ties by value
    assert values[order[0]] == 1000 and ranked.info["table_len"] == values.size
    code_bits = sum(int(counts[i]) * (2 * (rank + 1).bit_length() - 1 + 1)  # EG-0 of rank + sign
                    for rank, i in enumerate(order))
    assert ranked.nbits == ranked.info["table_bits"] + code_bits
    assert ranked.nbits < plain.nbits / 5


def test_entropy_is_that_of_the_quantized_values():
    x = gradients(10000, seed=2).astype(np.float32)
    encoded = get_codec("eg:k=auto").encode(x)
    q = np.rint(x.astype(np.float64) * 1e6).astype(np.int64)
    assert encoded.entropy_bits == pytest.approx(int_entropy_bits(q), rel=1e-12)
    assert encoded.entropy_bits <= encoded.nbits


def test_many_chunks_and_runs_across_them(monkeypatch, dequantized):
    monkeypatch.setattr(eg, "CHUNK", 1000)
    monkeypatch.setattr(eg_passes, "CHUNK", 1000)
    x = gradients(10500, seed=4, zeros=0.0)
    x[900:3100] = 0.0                       # a run over two chunk borders
    x[-1500:] = 0.0                         # trailing zeros
    for dtype in (np.float32, ml_dtypes.bfloat16, np.int16):
        a = (x * 1e5).astype(dtype) if dtype == np.int16 else x.astype(dtype)
        for spec in ("eg:k=auto,zeros=run", "eg:k=auto,remap=rank,sign=zigzag"):
            out = check_roundtrip(get_codec(spec), a)
            expected = a if dtype == np.int16 else dequantized(a, 1e6)
            assert np.array_equal(out, expected)


def test_one_pass_writer_grows_its_buffer(monkeypatch, dequantized):
    # fixed k without remap or runs writes while it counts, into a buffer sized by a guess
    monkeypatch.setattr(eg_passes.Source, "estimate_bits", lambda self, k, sign: 0)
    monkeypatch.setattr(eg_passes, "CHUNK", 10_000)
    x = gradients(60_000, seed=5)
    x[::997] = 5e4                           # codewords of more than 56 bits here and there
    for dtype in (np.float32, np.float64, ml_dtypes.bfloat16):
        a = x.astype(dtype)
        for spec in ("eg:k=0", "eg:k=3,sign=zigzag", "eg:k=1,sign=bit-nonzero"):
            assert np.array_equal(check_roundtrip(get_codec(spec), a), dequantized(a, 1e6))
    ints = (x * 1e9).astype(np.int64)
    assert np.array_equal(check_roundtrip(get_codec("eg:k=0"), ints), ints)


def test_values_far_from_zero():
    x = 10**12 + np.arange(-3000, 3000, dtype=np.int64) % 17
    x[::500] = -(2**61)
    for spec in ("eg:k=0", "eg:k=auto,remap=rank", "eg:k=auto,zeros=run"):
        assert np.array_equal(check_roundtrip(get_codec(spec), x), x)


def test_wide_value_ranges_use_the_outlier_tables(dequantized):
    # values up to 10 at scale 1e6 span 2e7 quantized values, beyond the direct tables
    x = gradients(4000, seed=6) * 1000
    x[:10] = [10.0, -10.0, 3.3, -7.1, 2e-6, 1e-3, 5.0, 9.99, -9.99, 0.1]
    for spec in ("eg:k=auto", "eg:k=0,remap=rank,zeros=run", "eg:k=3,sign=zigzag"):
        assert np.array_equal(check_roundtrip(get_codec(spec), x), dequantized(x, 1e6))


def test_rounding_is_half_to_even_like_python_round():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2**51 + 0.5, 2**52 - 0.5, 2**53 + 2.0])
    out = get_codec("eg:scale=1").decode(get_codec("eg:scale=1").encode(x).payload, x.dtype, x.shape)
    assert out.tolist() == [float(round(v)) for v in x]


def test_extreme_values_at_the_range_limit():
    big = float(2**62 - 512)                # largest float64 below 2**62
    x = np.array([big, -big, 0.0, 1.0])
    out = get_codec("eg:scale=1,k=auto").decode(get_codec("eg:scale=1,k=auto").encode(x).payload,
                                                 x.dtype, x.shape)
    assert np.array_equal(out, x)
    lim = np.array([2**62 - 1, -(2**62 - 1)], dtype=np.int64)
    assert np.array_equal(check_roundtrip(get_codec("eg:k=0,sign=zigzag"), lim), lim)
    tiny = np.array([1e-300, -5e-324, np.finfo(np.float32).tiny], dtype=np.float64)
    assert np.array_equal(get_codec("eg").decode(get_codec("eg").encode(tiny).payload, tiny.dtype, (3,)),
                          np.zeros(3))
    half = np.array([65504.0, -65504.0], dtype=np.float16)          # float16 max, q = 6.5e10
    assert np.array_equal(check_roundtrip(get_codec("eg"), half), half)


@pytest.mark.parametrize("array, words", [
    (np.array([0.0, np.nan], np.float32), r"element \(1,\) = .*nan.* of a float32 array: NaN"),
    (np.array([[1.0], [np.inf]]), r"element \(1, 0\) = .*inf.*: infinite"),
    (np.array([-np.inf], ml_dtypes.bfloat16), "infinite"),
    (np.array([4.7e12], np.float64), r"round\(x \* scale=1000000.0\) is beyond .* 2\*\*62"),
    (np.array([3e38], np.float32), "beyond the eg range"),
    (np.array(2**62, np.int64), r"element \(\) = .* of a int64 array: beyond"),
    (np.array([-(2**62)], np.int64), "beyond the eg range"),
    (np.array([1, 2**63], np.uint64), "element 1 = .* of a uint64 array: beyond"),
])
def test_not_encodable_values_are_reported(array, words):
    for spec in ("eg", "eg:k=auto,remap=rank,zeros=run"):
        with pytest.raises(NotEncodableError, match=words):
            get_codec(spec).encode(array)


def test_unsupported_dtypes_and_byte_orders(dequantized):
    with pytest.raises(CodecError, match="unsupported dtype complex64"):
        get_codec("eg").encode(np.zeros(3, np.complex64))
    big_endian = np.array([1.5e-6, -2.0, 0.25], dtype=">f4")
    out = get_codec("eg").decode(get_codec("eg").encode(big_endian).payload, np.float32, (3,))
    assert np.array_equal(out, dequantized(big_endian.astype(np.float32), 1e6))


def test_nan_far_into_a_large_array_names_its_index(monkeypatch):
    monkeypatch.setattr(eg, "CHUNK", 4096)
    monkeypatch.setattr(eg_passes, "CHUNK", 4096)
    x = np.zeros(50_000, np.float32)
    x[43_210] = np.nan
    with pytest.raises(NotEncodableError, match=r"element \(43210,\)"):
        get_codec("eg").encode(x)


def _int_arrays(dtype):
    info = np.iinfo(dtype)
    elements = hnp.from_dtype(np.dtype(dtype), min_value=max(info.min, 1 - 2**62),
                              max_value=min(info.max, 2**62 - 1))
    return hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, max_side=40), elements=elements)


@settings(max_examples=60, deadline=None, database=None)
@given(st.sampled_from([np.int8, np.int32, np.int64, np.uint16, np.uint64]).flatmap(_int_arrays),
       st.sampled_from(MODES), st.sampled_from(["0", "1", "4", "auto"]))
def test_property_integers_round_trip(x, mode, k):
    codec = get_codec(f"eg:k={k},{mode}")
    assert np.array_equal(check_roundtrip(codec, x), x)


@settings(max_examples=60, deadline=None, database=None)
@given(x=hnp.arrays(st.sampled_from([np.float32, np.float64, np.float16]),
                    hnp.array_shapes(min_dims=0, max_dims=2, max_side=60),
                    elements=st.floats(-1e3, 1e3, width=16)),
       mode=st.sampled_from(MODES), scale=st.sampled_from([1.0, 1e3, 1e6, 0.37]))
def test_property_floats_round_trip(x, mode, scale, dequantized):
    codec = get_codec(f"eg:k=auto,scale={scale},{mode}")
    assert np.array_equal(check_roundtrip(codec, x), dequantized(x, scale))
