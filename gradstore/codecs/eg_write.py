"""The eg encoder's writer: codewords into the bit stream, per element.

Codes travel packed, code << 8 | length, as eg_plan makes them: a length of
1..56 is the code itself, LONG a row of ``long_codes`` (as made by
eg_bits.codewords), and 0 a zero in run mode, which has no code of its own.
In run mode a code of 1..56 bits starts with the code of a run of no
zeros, the usual case in dense data (see with_run).

The stream is bytes, MSB first.  eg_bits.put keeps fewer than 8 bits
pending and stores 8 bytes at every call, so a code of up to 57 bits costs
no branch, and two codes that fit together cost one call: the writers go
two elements at a time.  Buffers end with 16 spare bytes.  state = [byte
position, pending bits, pending count, current zero run] as uint64,
carried across chunks.
"""
from __future__ import annotations

import numpy as np

from .eg_bits import U0, U1, eg_code, njit, put, store_be64, symbol_code
from .eg_kernels import BLOCK, exact, key_offset, value_keys

LONG = 255                       # length field of a packed code that is a row of long_codes
PAIR = 56                        # longest pair of codes put at once
U8 = np.uint64(8)
MASK8 = np.uint64(255)


@njit
def piece(hi, lo, low, rest):
    """Bits [low, rest) of the 128 bits hi:lo, rest - low in 1..32."""
    if low >= 64:
        bits = hi >> np.uint64(low - 64)
    elif low == 0:
        bits = lo
    else:
        bits = (lo >> np.uint64(low)) | (hi << np.uint64(64 - low))
    return bits & ((U1 << np.uint64(rest - low)) - U1)


@njit
def put_wide(out, pos, acc, nacc, hi, lo, length):
    """Append a code of up to 128 bits (``hi`` holds the bits above the low 64), 32 at a time."""
    rest = length
    while rest > 0:
        low = (rest - 1) // 32 * 32
        acc, nacc, word, step = put(acc, nacc, piece(hi, lo, low, rest), rest - low)
        store_be64(out, pos, word)
        pos += step
        rest = low
    return pos, acc, nacc


@njit
def put_packed(out, pos, acc, nacc, code, long_codes):
    """Append one packed code, whatever its length (0: nothing)."""
    length = np.int64(code & MASK8)
    if length == LONG:
        row = np.int64(code >> U8)
        packed = long_codes[row, 1]
        return put_wide(out, pos, acc, nacc, packed >> U8, long_codes[row, 0], np.int64(packed & MASK8))
    return put_wide(out, pos, acc, nacc, U0, code >> U8, length)


@njit
def put_pair(acc, nacc, a, b):
    """put() of the packed codes a then b at once if they fit in PAIR bits together, the
    usual: (done, acc, nacc, word, step); if not done, the caller puts them one by one."""
    both = (a & MASK8) + (b & MASK8)
    if both - U1 < np.uint64(PAIR):
        acc, nacc, word, step = put(acc, nacc, ((a >> U8) << (b & MASK8)) | (b >> U8), np.int64(both))
        return True, acc, nacc, word, step
    return False, acc, nacc, U0, U0


@njit
def with_run(code, run, k_run):
    """Run mode, one element's packed code (see eg_plan._pack): (action, entry, run).

    Action 0: a zero, the run grows and nothing is appended; 1: append
    ``entry``, the code as it is, starting with its run of no zeros; 2:
    append the run's code, then ``entry``, the code without that start.
    """
    length = code & MASK8
    if length == 0:
        return 0, U0, run + U1
    if length == LONG:
        return 2, code, run
    if run == 0:
        return 1, code, run
    length -= np.uint64(k_run + 1)                   # the code without its run of no zeros
    return 2, (((code >> U8) & ((U1 << length) - U1)) << U8) | length, run


@njit
def element_bits(code, run, k_run):
    """Run mode, the bits one element appends: (bits, length, run, fits), its run's
    code then its own code when they fit in PAIR bits together, nothing for a
    zero; when they do not fit, put_one() does it."""
    action, entry, after = with_run(code, run, k_run)
    if action == 0:
        return U0, 0, after, True
    length = np.int64(entry & MASK8)
    if action == 1:
        return entry >> U8, length, U0, True
    hi, lo, rlen = eg_code(run, k_run, False, False)
    if length + rlen <= PAIR:       # also rules out LONG
        return (lo << np.uint64(length)) | (entry >> U8), length + rlen, U0, True
    return U0, 0, run, False


@njit
def put_one(out, pos, acc, nacc, code, run, k_run, long_codes):
    """Append one element's packed code, in run mode with its run's code in front
    unless ``k_run`` is None: (pos, acc, nacc, run)."""
    if k_run is None:
        pos, acc, nacc = put_packed(out, pos, acc, nacc, code, long_codes)
        return pos, acc, nacc, run
    action, entry, run = with_run(code, run, k_run)
    if action == 2:
        hi, lo, rlen = eg_code(run, k_run, False, False)
        pos, acc, nacc = put_wide(out, pos, acc, nacc, hi, lo, rlen)
        run = U0
    if action != 0:
        pos, acc, nacc = put_packed(out, pos, acc, nacc, entry, long_codes)
    return pos, acc, nacc, run


@njit
def outlier_code(q, keys, codes):
    """The packed code of q in the sorted ``keys``, or 0 (a zero in run mode) if absent."""
    a, b = 0, keys.size
    while a < b:
        mid = (a + b) >> 1
        if keys[mid] < q:
            a = mid + 1
        else:
            b = mid
    return codes[a] if a < keys.size and keys[a] == q else U0


@njit
def write_values(x, is_float, scale, lut_lo, lut, out_keys, out_lut, long_codes, k_run, out, state):
    """Pass 2 for values: quantize again and append each element's codeword.

    ``lut`` (for values lut_lo, lut_lo + 1, ...) and ``out_lut`` (for the
    values ``out_keys``) hold packed codes; the scan has checked that every
    element can be coded.  ``k_run=None`` is plain mode, and numba compiles
    it without the runs.
    """
    span = np.uint64(lut.size)
    base = key_offset(is_float, lut_lo)
    raw = np.empty(BLOCK, dtype=np.int64)
    codes = np.empty(BLOCK, dtype=np.uint64)
    for start in range(0, x.size, BLOCK):
        n = min(x.size - start, BLOCK)
        value_keys(x, start, n, is_float, scale, raw)
        for t in range(n):
            j = np.uint64(raw[t]) - base
            codes[t] = lut[j] if j < span else outlier_code(exact(x[start + t], is_float, scale)[0],
                                                            out_keys, out_lut)
        emit(codes, n, k_run, long_codes, out, state)


@njit
def write_patterns(x, by_pattern, long_codes, k_run, out, state):
    """Pass 2 for bit patterns: ``by_pattern[p]`` is the packed code of pattern p."""
    codes = np.empty(BLOCK, dtype=np.uint64)
    for start in range(0, x.size, BLOCK):
        n = min(x.size - start, BLOCK)
        for t in range(n):
            codes[t] = by_pattern[x[start + t]]
        emit(codes, n, k_run, long_codes, out, state)


@njit
def emit(codes, n, k_run, long_codes, out, state):
    """Append the packed codes codes[:n], two at a time; ``k_run=None`` is plain mode."""
    pos = state[0]
    acc = state[1]
    nacc = np.int64(state[2])
    run = state[3]
    for t in range(0, n - 1, 2):
        a = codes[t]
        b = codes[t + 1]
        if k_run is not None and ((run != 0) | ((a & MASK8) == 0) | ((b & MASK8) == 0)):
            for code in (a, b):            # zeros, or values after zeros
                bits, length, after, fits = element_bits(code, run, k_run)
                if not fits:
                    pos, acc, nacc, run = put_one(out, pos, acc, nacc, code, run, k_run, long_codes)
                    continue
                run = after
                if length:
                    acc, nacc, word, step = put(acc, nacc, bits, length)
                    store_be64(out, pos, word)
                    pos += step
            continue
        done, acc, nacc, word, step = put_pair(acc, nacc, a, b)
        if done:
            store_be64(out, pos, word)
            pos += step
        else:
            pos, acc, nacc, run = put_one(out, pos, acc, nacc, a, run, k_run, long_codes)
            pos, acc, nacc, run = put_one(out, pos, acc, nacc, b, run, k_run, long_codes)
    if n & 1:
        pos, acc, nacc, run = put_one(out, pos, acc, nacc, codes[n - 1], run, k_run, long_codes)
    state[0] = pos
    state[1] = acc
    state[2] = np.uint64(nacc)
    state[3] = run


@njit
def encode_values(x, begin, is_float, scale, k, sign, wlo, counts, window_codes, long_codes, outliers,
                  out, state):
    """Both passes at once, for a fixed k without remap or runs: count as
    eg_kernels.scan_values does, and append each element's codeword, from
    ``window_codes`` (packed codes of the values wlo, wlo + 1, ...) or, for
    the values outside, computed on the spot.

    Starts at element ``begin``; returns (where it stopped, outliers found,
    index of the element that cannot be coded or -1).  It stops before a
    block that might not fit in ``out`` (16 bytes an element at most), so
    the caller can grow the buffer and go on.
    """
    second = counts.shape[0] - 1           # elements t and t + 1 count in different copies
    span = np.uint64(counts.shape[1])
    base = key_offset(is_float, wlo)
    room = out.size - 16 * BLOCK - 16     # may be negative: then no block fits
    raw = np.empty(BLOCK, dtype=np.int64)
    pos = state[0]
    acc = state[1]
    nacc = np.int64(state[2])
    nout = 0
    start = begin
    while start < x.size and np.int64(pos) <= room:
        n = min(x.size - start, BLOCK)
        value_keys(x, start, n, is_float, scale, raw)
        for t in range(0, n, 2):
            ja = np.uint64(raw[t]) - base
            jb = np.uint64(raw[min(t + 1, n - 1)]) - base
            if (ja < span) & (jb < span) & (t + 1 < n):  # the usual: a pair in the window
                counts[0, ja] += 1
                counts[second, jb] += 1
                a = window_codes[ja]
                b = window_codes[jb]
                done, acc, nacc, word, step = put_pair(acc, nacc, a, b)
                if done:
                    store_be64(out, pos, word)
                    pos += step
                    continue
                pos, acc, nacc = put_packed(out, pos, acc, nacc, a, long_codes)
                pos, acc, nacc = put_packed(out, pos, acc, nacc, b, long_codes)
                continue
            for i in range(t, min(t + 2, n)):
                j = np.uint64(raw[i]) - base
                if j < span:
                    counts[0, j] += 1
                    pos, acc, nacc = put_packed(out, pos, acc, nacc, window_codes[j], long_codes)
                    continue
                q, ok = exact(x[start + i], is_float, scale)
                if not ok:
                    return start, nout, start + i
                outliers[nout] = q
                nout += 1
                hi, lo, length = symbol_code(q, k, sign)
                pos, acc, nacc = put_wide(out, pos, acc, nacc, hi, lo, length)
        start += n
    state[0] = pos
    state[1] = acc
    state[2] = np.uint64(nacc)
    return start, nout, -1


@njit
def encode_patterns(x, begin, counts, by_pattern, long_codes, out, state):
    """encode_values for bit patterns: count them and append ``by_pattern[p]``, packed
    codes; returns where it stopped, as encode_values does."""
    mask = counts.shape[0] - 1
    room = out.size - 16 * BLOCK - 16     # may be negative: then no block fits
    codes = np.empty(BLOCK, dtype=np.uint64)
    start = begin
    while start < x.size and np.int64(state[0]) <= room:
        n = min(x.size - start, BLOCK)
        for t in range(n):
            p = x[start + t]
            counts[t & mask, p] += 1
            codes[t] = by_pattern[p]
        emit(codes, n, None, long_codes, out, state)
        start += n
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
