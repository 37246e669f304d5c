"""What the ``fpx`` encoder and decoder kernels share: constants, error codes, varints, tables.

Values come in as int64 lanes: 16- and 32-bit floats as their unsigned
views, widened; float64 as its int64 view.  rANS state arithmetic runs in
uint64 (never mixed with int64, which numba would turn into floats).  The
layout these kernels read and write is described in ``fpx.py``.

The decoder never trusts the payload: every read is bounds-checked, and a
chunk must end with all rANS states back at their start value and every
byte of its streams used; a failure returns one of the negative error codes
below, which ``fpx.py`` turns into a CodecError.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import overload

T = 8                     # symbol bits: the 8 bits after the sign
ZERO = 1 << T             # symbols of +0 and -0: ZERO, ZERO + 1
A = ZERO + 2              # alphabet size
CTX = 2                   # contexts: the value NS positions back was not / was a zero
NS = 4                    # interleaved rANS states, one per position modulo NS
RANS_L = 1 << 15          # rANS states live in [2**15, 2**31): the reciprocal division is exact there
SCALE = 12                # each table's frequencies sum to 2**SCALE

E_TABLE = -1              # a frequency table that is malformed or does not sum to 2**scale
E_RANS = -2               # the rANS stream ran out, or did not end where it should
E_RAW = -3                # the raw bytes ran out, or some are left over
E_SIZES = -4              # the chunk directory does not fit the payload


def lane_bits(lanes) -> int:
    """W, the bits per value of a lane array (16, 32 or 64).

    In a kernel it is a compile-time constant of the array's type, unlike
    ``lanes.itemsize``: each dtype gets its own machine code, with the shifts
    and raw byte counts that follow from W folded in (measured 5-10% faster
    than W passed as an argument).
    """
    return lanes.dtype.itemsize * 8


@overload(lane_bits)
def _lane_bits(lanes):
    bits = lanes.dtype.bitwidth
    return lambda lanes: bits


@njit(cache=True, nogil=True)
def _normalize(counts, n, freq):
    """Frequencies summing to 2**SCALE, each present symbol >= 1; a context never seen gets {0: 2**SCALE}."""
    M = np.int64(1) << SCALE
    if n == 0:
        freq[:] = 0
        freq[0] = M
        return
    total = np.int64(0)
    best = 0
    for s in range(A):
        c = counts[s]
        if c > 0:
            f = max(np.int64(1), (c * M) // n)
            freq[s] = f
            total += f
            if c > counts[best]:
                best = s
        else:
            freq[s] = 0
    diff = M - total
    freq[best] += max(diff, np.int64(0))
    while diff < 0:       # take from the largest frequencies, never below 1
        big = 0
        for s in range(A):
            if freq[s] > freq[big]:
                big = s
        take = min(-diff, freq[big] - 1)
        freq[big] -= take
        diff += take


@njit(cache=True, nogil=True)
def _put_varint(out, p, value):
    while value >= 0x80:
        out[p] = (value & 0x7F) | 0x80
        value >>= 7
        p += 1
    out[p] = value
    return p + 1


@njit(cache=True, nogil=True)
def _get_varint(buf, p, end):
    """(value, new position), or (-1, p) when the varint is cut short or too long."""
    value = np.int64(0)
    shift = 0
    while p < end and shift < 28:
        b = np.int64(buf[p])
        p += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, p
        shift += 7
    return np.int64(-1), p
