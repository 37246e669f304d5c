"""Order-0 entropy, the bound every codec's size is measured against, and the error
sums of a lossy decode."""
from __future__ import annotations

import functools

import numba as nb
import numpy as np

from .. import dtypes


def entropy_bits(counts: np.ndarray) -> float:
    """Total order-0 entropy, in bits, of a sample whose symbols occur ``counts`` times.

    This is H·n, the least a code with one codeword per symbol, built for
    this very sample, could spend (table not counted).
    """
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(np.sum(counts * np.log2(total / counts)))


def symbol_counts(values: np.ndarray) -> np.ndarray:
    """How often each distinct value of an integer array occurs (order not specified)."""
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    if flat.dtype == np.bool_:
        flat = flat.view(np.uint8)
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo < 4 * flat.size + 65536:  # bincount beats sorting when the range is small
        return np.bincount((flat - lo).astype(np.intp))
    return np.unique(flat, return_counts=True)[1]


def int_entropy_bits(values: np.ndarray) -> float:
    """Total order-0 entropy, in bits, of the values of an integer array."""
    return entropy_bits(symbol_counts(values))


def byte_entropy_bits(data: bytes | memoryview | np.ndarray) -> float:
    """Total order-0 entropy, in bits, of a byte string taken one byte at a time."""
    array = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else data.reshape(-1).view(np.uint8)
    return entropy_bits(np.bincount(array, minlength=256))


def error_sums(raw: np.ndarray, decoded: np.ndarray) -> tuple[float, float, float] | None:
    """(max |decoded - raw|, sum (decoded - raw)**2, sum raw**2) in float64, in one pass
    over both arrays and without float64 copies of them; None for the dtypes it does
    not take (it takes float32, float64, float16 and bfloat16, raw and decoded alike).

    2-byte floats go by bit pattern, through a table of every pattern's value.
    """
    if raw.dtype != decoded.dtype or raw.shape != decoded.shape:
        return None
    try:
        name = dtypes.name_of(raw.dtype)
    except ValueError:
        return None
    raw, decoded = raw.reshape(-1), decoded.reshape(-1)
    if name in ("float16", "bfloat16"):
        table = pattern_floats(raw.dtype)
        raw, decoded = raw.view(np.uint16), decoded.view(np.uint16)
    elif name in ("float32", "float64"):
        table = None
    else:
        return None
    from .eg import notice  # noqa: F401  (says so on stderr if the kernel is compiled)
    return _error_sums(raw, decoded, table)


@functools.lru_cache(maxsize=4)
def pattern_floats(dtype: np.dtype) -> np.ndarray:
    """Every bit pattern of a 2-byte float dtype as its float64 value."""
    with np.errstate(invalid="ignore"):
        return np.arange(1 << 16, dtype=np.uint16).view(dtype).astype(np.float64)


@nb.njit(cache=True, nogil=True, inline="always")
def _value(x, table, i):
    if table is None:
        return np.float64(x[i])
    return table[x[i]]


@nb.njit(cache=True, nogil=True)
def _error_sums(raw, decoded, table):
    """error_sums' pass, four elements at a time into four sums each, so that the
    additions do not wait on one another.  A NaN difference makes the error sum
    NaN, and then the maximum too."""
    n = raw.size
    top = 0.0
    e0 = e1 = e2 = e3 = r0 = r1 = r2 = r3 = 0.0
    i = 0
    while i + 3 < n:
        a0, a1, a2, a3 = _value(raw, table, i), _value(raw, table, i + 1), \
            _value(raw, table, i + 2), _value(raw, table, i + 3)
        d0, d1 = _value(decoded, table, i) - a0, _value(decoded, table, i + 1) - a1
        d2, d3 = _value(decoded, table, i + 2) - a2, _value(decoded, table, i + 3) - a3
        e0 += d0 * d0
        e1 += d1 * d1
        e2 += d2 * d2
        e3 += d3 * d3
        r0 += a0 * a0
        r1 += a1 * a1
        r2 += a2 * a2
        r3 += a3 * a3
        top = max(top, max(max(abs(d0), abs(d1)), max(abs(d2), abs(d3))))
        i += 4
    while i < n:
        a = _value(raw, table, i)
        d = _value(decoded, table, i) - a
        e0 += d * d
        r0 += a * a
        top = max(top, abs(d))
        i += 1
    err = (e0 + e1) + (e2 + e3)
    return top if err == err else np.nan, err, (r0 + r1) + (r2 + r3)  # a NaN error, as np.max
