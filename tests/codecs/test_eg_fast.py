"""The fast paths of the eg codec and of the error metrics, against the plain ones.

Each fast path is checked value for value (or byte for byte) against what it
replaces, on wide-range data like real gradients at scale 1e6 (values up to
millions, tens of thousands of distinct ones), not only on Gaussians.
"""
from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numba
import numpy as np
import pytest

from gradstore.codecs import get_codec
from gradstore.codecs.eg import notice as eg_notice
from gradstore.codecs.eg import passes as eg_passes
from gradstore.codecs.eg import plan as eg_plan
from gradstore.codecs.eg import read as eg_read
from gradstore.codecs.stats import error_sums
from gradstore.variants import error_metrics, trial

HALF_TYPES = {"float16": (np.float16, eg_read.HALF), "bfloat16": (ml_dtypes.bfloat16, eg_read.BFLOAT)}


def wide(n: int, seed: int = 0) -> np.ndarray:
    """Gradient-like values over five decades, with zeros, as float64."""
    rng = np.random.default_rng(seed)
    x = rng.laplace(size=n) * 10.0 ** rng.uniform(-6, 0.4, size=n)
    x[rng.random(n) < 0.05] = 0.0
    return x


def _numpy_sums(raw: np.ndarray, decoded: np.ndarray) -> tuple[float, float, float]:
    ref = raw.astype(np.float64).reshape(-1)
    diff = decoded.astype(np.float64).reshape(-1) - ref
    return float(np.max(np.abs(diff))), float(diff @ diff), float(ref @ ref)


def _doubles_around_every_pattern(dtype) -> np.ndarray:
    """Every finite value of a 2-byte float, the midpoints between neighbours (ties), and
    the doubles just beside those: where a rounding can go wrong."""
    with np.errstate(invalid="ignore"):
        v = np.arange(1 << 16, dtype=np.uint16).view(dtype).astype(np.float64)
    v = np.sort(v[np.isfinite(v)])
    mid = (v[1:] + v[:-1]) / 2
    top = v[-1] + (v[-1] - v[-2]) / 2                     # rounds to inf (a tie, to even)
    edges = [0.0, -0.0, np.inf, -np.inf, 1e300, -1e300, 5e-324, -5e-324, top, np.nextafter(top, 0)]
    return np.concatenate([v, mid, np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf), edges])


@numba.njit
def _narrow_all(y, exp_bits, man_bits):
    out = np.empty(y.size, dtype=np.uint16)
    for i in range(y.size):
        out[i] = eg_read.narrow_bits(y[i], exp_bits, man_bits)
    return out


@pytest.mark.parametrize("name", HALF_TYPES)
def test_narrow_rounds_as_numpy_astype(name):
    dtype, (exp_bits, man_bits) = HALF_TYPES[name]
    rng = np.random.default_rng(3)
    y = np.concatenate([
        _doubles_around_every_pattern(dtype),
        rng.standard_normal(200_000) * np.exp2(rng.uniform(-160, 140, 200_000)),
        rng.integers(-2**45, 2**45, 100_000) * (1 / 1e6),    # decoded values at scale 1e6
        np.arange(-70_000, 70_000) * (1 / 1e-3)])
    out = _narrow_all(y, exp_bits, man_bits)
    with np.errstate(over="ignore"):
        want = y.astype(dtype).view(np.uint16)
    assert np.array_equal(out, want), y[out != want][:5]


@pytest.mark.parametrize("name", HALF_TYPES)
@pytest.mark.parametrize("spec", ["eg:k=0,scale=1e6,sign=bit", "eg:k=auto,scale=1e6,remap=rank",
                                  "eg:k=auto,scale=1e6,remap=rank,zeros=run", "eg:k=2,scale=3e2,sign=zigzag"])
def test_two_byte_floats_decode_as_numpy_narrows(name, spec):
    """Bit for bit as float64(q) * (1 / scale) narrowed by numpy (the spec; q = 0 gives +0)."""
    x = wide(150_000, seed=5).astype(HALF_TYPES[name][0])
    codec = get_codec(spec)
    out = codec.decode(codec.encode(x).payload, x.dtype, x.shape)
    scale = codec.params["scale"]
    q = np.rint(x.astype(np.float64) * scale).astype(np.int64)
    assert out.dtype == x.dtype
    assert np.array_equal(out.view(np.uint16), (q * (1.0 / scale)).astype(x.dtype).view(np.uint16))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16],
                         ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", [1, 3, 4, 7, 100_003])
def test_error_sums_are_the_numpy_ones(dtype, n):
    x = wide(n, seed=n)
    raw = x.astype(dtype)
    decoded = (np.rint(x * 1e4) / 1e4).astype(dtype)        # a lossy decode
    top, sq_err, sq_ref = error_sums(raw, decoded)
    want = _numpy_sums(raw, decoded)
    assert top == want[0]
    assert sq_err == pytest.approx(want[1], rel=1e-12) and sq_ref == pytest.approx(want[2], rel=1e-12)


def test_error_sums_nan_and_other_dtypes():
    raw = np.ones(10, dtype=np.float32)
    decoded = raw.copy()
    decoded[3] = np.nan
    top, sq_err, _ = error_sums(raw, decoded)
    assert np.isnan(top) and np.isnan(sq_err)
    assert error_sums(np.ones(3, np.int32), np.ones(3, np.int32)) is None
    assert error_sums(np.ones(3, np.float32), np.ones(3, np.float64)) is None
    metrics = error_metrics(np.arange(4, dtype=np.int16), np.arange(1, 5, dtype=np.int16))
    assert metrics["max_abs"] == 1.0 and metrics["sq_err"] == 4.0 and metrics["sq_ref"] == 14.0


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
def test_trial_metrics_are_those_of_the_decoded_payload(dtype):
    raw = wide(70_000, seed=9).astype(dtype).reshape(70, 1000)
    codec = get_codec("eg:k=auto,scale=1e6,remap=rank")
    t = trial(codec, raw)
    decoded = codec.decode(t.payload, raw.dtype, raw.shape)
    top, sq_err, sq_ref = _numpy_sums(raw, decoded)
    assert t.err["max_abs"] == top
    assert t.err["sq_err"] == pytest.approx(sq_err, rel=1e-12)
    assert t.err["sq_ref"] == pytest.approx(sq_ref, rel=1e-12)
    assert t.err["rel_l2"] == pytest.approx((sq_err / sq_ref) ** 0.5, rel=1e-12)


SPECS = ["eg:k=0,scale=1e6,sign=bit", "eg:k=auto,scale=1e6,remap=rank", "eg:k=auto,scale=1e6,remap=rank,zeros=run",
         "eg:k=3,scale=1e6,sign=zigzag", "eg:k=1,scale=1e6,sign=bit-nonzero,zeros=run"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("name", HALF_TYPES)
@pytest.mark.parametrize("n", [1, 300, 9000])
def test_small_two_byte_floats_by_value_write_what_the_patterns_write(monkeypatch, spec, name, n):
    """Below PATTERNS_FROM elements, float16/bfloat16 go the float32 value path: same bytes."""
    x = wide(n, seed=n).astype(HALF_TYPES[name][0])
    x[:: 97] = 0
    codec = get_codec(spec)
    fast = codec.encode(x)
    monkeypatch.setattr(eg_passes, "PATTERNS_FROM", 0)
    by_pattern = codec.encode(x)
    assert fast.payload == by_pattern.payload and fast.entropy_bits == by_pattern.entropy_bits
    assert fast.info == by_pattern.info


@pytest.mark.parametrize("spec", SPECS[:2] + ["eg:k=2,scale=3e4,sign=zigzag"])
def test_one_pass_window_tables_write_what_the_codeword_packer_writes(monkeypatch, spec, dequantized):
    """fill_window_codes against fixed_codes (the table it replaces), on values up to +-2.4e6."""
    x = (wide(200_000, seed=2) * 2).astype(np.float32)
    codec = get_codec(spec)
    fast = codec.encode(x).payload

    def packed(lo, width, k, sign):
        codes, lens, long_codes = eg_plan.fixed_codes(np.arange(lo, lo + width, dtype=np.int64), k, sign)
        return *eg_plan.with_sentinels(codes, lens), long_codes
    monkeypatch.setattr(eg_passes, "window_codes", packed)
    assert codec.encode(x).payload == fast
    out = codec.decode(fast, x.dtype, x.shape)
    assert np.array_equal(out, dequantized(x, codec.params["scale"]))


def test_window_codes_fall_back_to_long_codes():
    """A window of values whose codewords pass 56 bits: the packer's tables, long codes included."""
    lo, width = 2**40 - 100, 300
    codes, lens, long_codes = eg_plan.window_codes(lo, width, 0, 0)
    want = eg_plan.fixed_codes(np.arange(lo, lo + width, dtype=np.int64), 0, 0)
    assert np.array_equal(codes[1:-1], want[0]) and np.array_equal(lens[1:-1], want[1])
    assert np.array_equal(long_codes, want[2]) and long_codes.shape[0] == width


def test_a_compile_says_so_once_and_a_cache_load_does_not(tmp_path):
    """The first compile of a kernel prints one line on stderr; a process that loads the
    kernel from numba's cache prints nothing."""
    code = ("import numpy as np\n"
            "from gradstore.codecs.stats import error_sums\n"
            "a = np.ones(5, np.float32)\n"
            "print(error_sums(a, a), error_sums(a.astype(np.float64), a.astype(np.float64)))\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert runs[0].stderr.splitlines() == [eg_notice.MESSAGE]
    assert runs[1].stderr == ""
    assert runs[0].stdout == runs[1].stdout == "(0.0, 0.0, 5.0) (0.0, 0.0, 5.0)\n"


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16],
                         ids=lambda d: np.dtype(d).name)
def test_error_sums_taken_in_the_decoders_pass(monkeypatch, spec, dtype):
    """decode_compared decodes what decode does, and its sums are error_sums' (zero runs,
    chunk borders of the 2-byte narrowing and rows of zeros included)."""
    import gradstore.codecs.eg.codec as eg_codec
    monkeypatch.setattr(eg_codec, "CHUNK", 5000)
    x = wide(23_456, seed=4)
    x[1000:3000] = 0.0                                     # long runs of zeros
    raw = x.astype(dtype).reshape(2, -1)
    codec = get_codec(spec)
    payload = codec.encode(raw).payload
    decoded, sums = codec.decode_compared(payload, raw)
    plain = codec.decode(payload, raw.dtype, raw.shape)
    assert decoded.dtype == raw.dtype and decoded.shape == raw.shape
    assert decoded.tobytes() == plain.tobytes()
    want = error_sums(raw, plain)
    assert sums[0] == want[0]
    assert sums[1] == pytest.approx(want[1], rel=1e-12) and sums[2] == pytest.approx(want[2], rel=1e-12)


def test_decode_compared_of_integers_has_no_sums():
    codec = get_codec("eg:k=0")
    raw = np.arange(-50, 50, dtype=np.int16)
    decoded, sums = codec.decode_compared(codec.encode(raw).payload, raw)
    assert sums is None and np.array_equal(decoded, raw)
