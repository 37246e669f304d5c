"""The eg encoder's writing passes: each element's codeword into the bit stream.

The codewords come from tables that plan makes (as emit
describes) and reach the stream through emit.emit, a block at a time:

* write_values / write_patterns: pass 2, after the scan, as the plan says;
* encode_values / encode_patterns: both passes at once, for a fixed k
  without remap or runs, whose codewords need no histogram: count as the
  scan does and write in the same pass.
"""
from __future__ import annotations

import numpy as np

from .bits import eg_code, njit, store_be64
from .emit import emit, put_wide
from .kernels import BLOCK, count_block, outliers_of, table_keys, zero_index

NONE = np.zeros(0, dtype=np.int64)   # no outlier keys: the one-pass writers compute their codes


@njit
def write_values(x, offset, cache, listed, is_float, scale, lut_lo, tables, k_run, group, zero_runs, out, state):
    """Pass 2 for values: append each element's codeword, the table indices from the
    scan's ``cache`` if not None, else quantizing again; in run mode, with the
    scan's ``listed`` non-zeros (not None), only those (see emit.emit_until),
    x[0] being element ``offset`` of the array; in plain mode, with ``zero_runs``,
    runs of zeros a word at a time.

    ``tables`` = (lut_codes, lut_lens, out_keys, out_codes, out_lens,
    long_codes), as in plan.Plan: the codewords of the values lut_lo,
    lut_lo + 1, ... (with sentinels, see kernels) and of the values
    ``out_keys``; the scan has checked that every element can be coded.
    ``k_run=None`` is plain mode, and numba compiles it without the runs.
    """
    codes, lens, out_keys, out_codes, out_lens, long_codes = tables
    size = lens.size
    z = zero_index(lut_lo, size)
    zero_runs = zero_runs and k_run is None
    keys = np.empty(BLOCK, dtype=np.int64)
    for start in range(0, x.size, BLOCK):
        n = min(x.size - start, BLOCK)
        src = (x, start, is_float, scale, out_keys, out_codes, out_lens, -1, 0, long_codes)
        if cache is None:
            table_keys(x, start, n, is_float, scale, lut_lo, size, keys)
            emit_listed(keys, n, codes, lens, group, k_run, z, listed, offset + start, zero_runs, src, out, state)
        else:
            emit_listed(cache[start:start + n], n, codes, lens, group, k_run, z, listed, offset + start,
                        zero_runs, src, out, state)


@njit
def emit_listed(keys, n, codes, lens, group, k_run, z, listed, first_index, zero_runs, src, out, state):
    """emit(), of the ``listed`` elements only if not None (keys[0] is element ``first_index``)."""
    if listed is None:
        emit(keys, n, codes, lens, group, k_run, z, None, zero_runs, src, out, state)
    else:
        emit(keys, n, codes, lens, group, k_run, z, (listed, first_index), False, src, out, state)


@njit
def write_patterns(x, codes, lens, long_codes, k_run, z, group, out, state):
    """Pass 2 for bit patterns: pattern p has the codeword codes[p] of lens[p] bits, and
    pattern ``z`` is a zero (one of them: the others have the length ZERO)."""
    src = (x, 0, False, 1.0, NONE, codes[:0], lens[:0], -1, 0, long_codes)
    emit(x, x.size, codes, lens, group, k_run, np.uint32(z), None, False, src, out, state)


@njit
def encode_values(x, begin, is_float, scale, k, sign, wlo, counts, codes, lens, long_codes, outliers,
                  nout, group, zero_runs, out, state):
    """Both passes at once, for a fixed k without remap or runs: count as
    kernels.scan_values does, and append each element's codeword, from
    ``codes``/``lens`` (over the window, as ``counts``) or, for the values
    outside, computed on the spot, and copied to ``outliers`` after the
    ``nout`` there.

    Starts at element ``begin``; returns (where it stopped, outliers there
    are now, index of the element that cannot be coded or -1).  It stops before a
    block that might not fit in ``out`` (16 bytes an element at most), so
    the caller can grow the buffer and go on.
    """
    size = counts.shape[1]
    z = zero_index(wlo, size)
    room = out.size - 16 * BLOCK - 16     # may be negative: then no block fits
    keys = np.empty(BLOCK, dtype=np.int64)
    start = begin
    while start < x.size and np.int64(state[0]) <= room:
        n = min(x.size - start, BLOCK)
        table_keys(x, start, n, is_float, scale, wlo, size, keys)
        count_block(keys, n, counts, 0, 0, None)
        nout, bad = outliers_of(x, start, keys, n, counts, is_float, scale, outliers, nout)
        if bad >= 0:
            return start, nout, start + bad
        src = (x, start, is_float, scale, NONE, codes[:0], lens[:0], k, sign, long_codes)
        emit(keys, n, codes, lens, group, None, z, None, zero_runs, src, out, state)
        start += n
    return start, nout, -1


@njit
def encode_patterns(x, begin, counts, codes, lens, long_codes, group, out, state):
    """encode_values for bit patterns: count them and append their codewords, pattern p's
    codes[p] of lens[p] bits; returns where it stopped, as encode_values does."""
    room = out.size - 16 * BLOCK - 16     # may be negative: then no block fits
    src = (x, 0, False, 1.0, NONE, codes[:0], lens[:0], -1, 0, long_codes)
    start = begin
    while start < x.size and np.int64(state[0]) <= room:
        block = x[start:start + BLOCK]
        count_block(block, block.size, counts, 0, 0, None)
        emit(block, block.size, codes, lens, group, None, np.uint32(0), None, False, src, out, state)
        start += block.size
    return start


@njit
def write_eg_values(values, k, signed, out, state):
    """Append EG-k codes of ``values`` (int64), plus a sign bit for non-zeros if ``signed``.

    Used for the rank table (signed deltas) and the final zero run.
    """
    pos = state[0]
    acc = state[1]
    nacc = np.int64(state[2])
    for i in range(values.size):
        d = values[i]
        hi, lo, length = eg_code(np.uint64(abs(d)), k, signed and d != 0, d < 0)
        pos, acc, nacc = put_wide(out, pos, acc, nacc, hi, lo, length)
    state[0] = pos
    state[1] = acc
    state[2] = np.uint64(nacc)


@njit
def flush(out, state):
    """Write out the pending bits of a finished stream, zero-padded to a whole byte."""
    nacc = np.int64(state[2])
    if nacc:
        store_be64(out, state[0], state[1] << np.uint64(64 - nacc))
