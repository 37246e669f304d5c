"""The per-element passes of the eg encoder: quantizing and counting (the scan).

Everything here runs once per element, so it is numba and nothing else;
the bit arithmetic lives in eg_bits.py, the writer in eg_write.py, the
decoder in eg_read.py and what is done once per distinct symbol in
eg_plan.py.  Each kernel works on one chunk and keeps its state in a small
array, so callers can feed chunks of any size.

Inputs come as one of two kinds:

* values (float32/float64, or integers up to 64 bits): quantized a block at
  a time into a small buffer, a loop that vectorizes; the serial work that
  follows reads only the buffer;
* bit patterns (any 1- or 2-byte dtype, seen as uint8/uint16): there are at
  most 65536 of them, so eg.py quantizes each pattern once and the kernels
  only count patterns and look up codewords by pattern.
"""
from __future__ import annotations

import numpy as np

from .eg_bits import eg_class, njit

LIMIT = 1 << 62                 # |quantized value| must stay below this
FLIMIT = float(LIMIT)
FAST = 1 << 51                  # |q| below this: the rounding trick of value_keys is exact
BLOCK = 1024                    # values quantized per vectorized step
COPIES = 2                      # interleaved histograms in the scan (a power of 2)
ROUNDER = float(3 << 51)        # 1.5 * 2**52
ROUNDER_BITS = 0x4338000000000000  # its bit pattern


@njit
def value_keys(x, start, n, is_float, scale, raw):
    """raw[:n] = keys of x[start:start + n]: the value itself for integers, for floats
    the bit pattern of x * scale + 1.5 * 2**52.

    For |x * scale| < 2**51 that sum's low bits are rint(x * scale) (ties
    to even), so key - ROUNDER_BITS is the quantized value.  Every other
    float, NaN and Inf included, gives a key at least 2**51 away from
    ROUNDER_BITS: a window inside (-2**51, 2**51) never contains one, and
    what falls outside the window goes through exact().
    """
    if is_float:
        as_float = raw.view(np.float64)
        for i in range(n):
            as_float[i] = np.float64(x[start + i]) * scale + ROUNDER
    else:
        for i in range(n):
            raw[i] = np.int64(x[start + i])


@njit
def key_offset(is_float, lo):
    """What to subtract (as uint64) from a key to get its index in a table starting at value lo."""
    return np.uint64(lo) + np.uint64(ROUNDER_BITS if is_float else 0)


@njit
def exact(value, is_float, scale):
    """(q, ok): one element quantized the slow way; ok is False if it cannot be coded."""
    if is_float:
        y = np.float64(value) * scale
        if not abs(y) < FLIMIT:  # also NaN
            return np.int64(0), False
        return np.int64(np.rint(y)), True
    q = np.int64(value)
    return q, (q < LIMIT) & (q > -LIMIT)


@njit
def end_run(zero, run, run_classes):
    """The zero run after one more element: count a run of zeros that ends.

    Runs of no zeros are not counted here: the caller derives them from the
    number of non-zero values, so dense data never touches the table.
    """
    if zero:
        return run + 1
    b, ones = eg_class(np.uint64(run))
    run_classes[b, ones] += 1
    return 0


@njit
def scan_values(x, is_float, scale, wlo, counts, outliers, run_classes, state):
    """Pass 1 for values: quantize, validate, count values and zero runs.

    Values in [wlo, wlo + width) are counted in ``counts`` (copies, width),
    element t in copy t % copies, so that a run of equal values (zeros) does
    not chain each increment on the one before; the rest are copied to
    ``outliers``; returns how many were.  The first element that cannot be
    coded (NaN, Inf, |q| >= 2**62) stops the scan: its index goes to
    state[1].  state[0] carries the current zero run across chunks;
    ``run_classes=None`` counts no runs (and numba compiles it without).
    """
    copies, width = counts.shape
    mask = copies - 1
    span = np.uint64(width)
    base = key_offset(is_float, wlo)
    zero_key = ROUNDER_BITS if is_float else 0
    raw = np.empty(BLOCK, dtype=np.int64)
    nout = 0
    run = state[0]
    for start in range(0, x.size, BLOCK):
        n = min(x.size - start, BLOCK)
        value_keys(x, start, n, is_float, scale, raw)
        for t in range(n):
            j = np.uint64(raw[t]) - base
            if j < span:
                counts[t & mask, j] += 1
            else:
                q, ok = exact(x[start + t], is_float, scale)
                if not ok:
                    state[1] = start + t
                    return nout
                outliers[nout] = q
                nout += 1
            if run_classes is not None:
                zero = raw[t] == zero_key
                if zero | (run != 0):  # one branch for the usual non-zero after a non-zero
                    run = end_run(zero, run, run_classes)
    state[0] = run
    return nout


@njit
def scan_patterns(x, counts, is_zero, run_classes, state):
    """Pass 1 for bit patterns: count them (``counts`` as in scan_values) and the zero runs.

    ``is_zero[p]`` says whether pattern p quantizes to 0; state[0] carries
    the current zero run across chunks, and ``run_classes=None`` counts none.
    """
    mask = counts.shape[0] - 1
    run = state[0]
    for t in range(x.size):
        counts[t & mask, x[t]] += 1
        if run_classes is not None:
            zero = is_zero[x[t]]
            if zero | (run != 0):
                run = end_run(zero, run, run_classes)
    state[0] = run
