"""The per-element passes of the eg codec: count, write, read.

Everything here runs once per element, so it is numba and nothing else;
the bit arithmetic lives in eg_bits.py and what is done once per distinct
symbol in eg_plan.py.  Each kernel works on one chunk and keeps its state
in a small array, so callers can feed chunks of any size (and widen
float16 one chunk at a time; bfloat16 is widened on the fly).  Inside a chunk, values are
quantized a block at a time into a small buffer: that loop vectorizes, and
the serial bit work that follows reads only the buffer.

Bit order follows eg.py: MSB first, written as 64-bit words that are
byte-swapped to big-endian once at the end, read as big-endian 32-bit words.
"""
from __future__ import annotations

import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from .eg_bits import U0, U1, U63, bit_at, eg_class, eg_code, eg_decode, njit, push, window

LIMIT = 1 << 62                 # |quantized value| must stay below this
FLIMIT = float(LIMIT)
BLOCK = 1024                    # values quantized per vectorized step
COPIES = 2                      # interleaved histograms in the scan (a power of 2)
TWO51 = float(1 << 51)
ROUNDER = float(3 << 51)        # 1.5 * 2**52
ROUNDER_BITS = 0x4338000000000000  # its bit pattern

SIGN_BIT, SIGN_BIT_NONZERO, SIGN_ZIGZAG = 0, 1, 2
KIND_INT, KIND_FLOAT, KIND_BF16 = 0, 1, 2       # what the kernels' input x holds

# read() error codes, turned into messages by eg.py
ERR_TRUNCATED, ERR_CODEWORD, ERR_NEGATIVE_ZERO, ERR_RANK, ERR_RUN = 1, 2, 3, 4, 5


@njit
def quantize_block(x, start, stop, kind, scale, buf, scratch):
    """buf[:stop - start] = the quantized x[start:stop]; False if one cannot be coded.

    ``kind`` says what x holds: KIND_INT integers, KIND_FLOAT floats,
    KIND_BF16 bfloat16 bit patterns, widened here through ``scratch``
    (uint32, BLOCK long) so that no separate conversion pass is needed.
    """
    n = stop - start
    if kind == KIND_BF16:
        for i in range(n):
            scratch[i] = np.uint32(x[start + i]) << np.uint32(16)
        return quantize_floats(scratch.view(np.float32), 0, n, scale, buf)
    if kind == KIND_FLOAT:
        return quantize_floats(x, start, n, scale, buf)
    ok = True
    for i in range(n):
        q = np.int64(x[start + i])
        ok &= (q < LIMIT) & (q > -LIMIT)
        buf[i] = q
    return ok


@njit
def quantize_floats(x, start, n, scale, buf):
    """buf[:n] = rint(x[start:start + n] * scale), ties to even; False if one cannot be coded.

    For |y| < 2**51, y + 1.5 * 2**52 is a float whose low bits are the
    rounded integer, so a subtraction on the bits converts it: unlike a
    float-to-int64 conversion, that vectorizes without AVX-512.
    """
    as_float = buf.view(np.float64)
    small = True
    for i in range(n):
        y = np.float64(x[start + i]) * scale
        small &= abs(y) < TWO51            # also False for NaN
        as_float[i] = y + ROUNDER
    if small:
        for i in range(n):
            buf[i] -= ROUNDER_BITS
        return True
    ok = True
    for i in range(n):
        y = np.float64(x[start + i]) * scale
        ok &= abs(y) < FLIMIT
        buf[i] = np.int64(np.rint(y)) if ok else 0
    return ok


@njit
def first_bad(x, start, stop, kind, scale, buf, scratch):
    """Index of the first element of x[start:stop] that quantize_block rejects."""
    for i in range(start, stop):
        if not quantize_block(x, i, i + 1, kind, scale, buf, scratch):
            return i
    return stop


@njit
def scan(x, kind, scale, wlo, counts, outliers, runs, run_classes, state):
    """Pass 1: quantize, validate, count values and zero runs.

    Values in [wlo, wlo + width) are counted in ``counts`` (copies, width),
    element t in copy t % copies, so that a run of equal values (zeros) does
    not chain each increment on the one before; the rest are copied to
    ``outliers``; returns how many were.  The first element that cannot be
    coded (NaN, Inf, |q| >= 2**62) stops the scan: its index goes to
    state[1].  state[0] carries the current zero run across chunks.
    """
    copies, width = counts.shape
    mask = copies - 1
    buf = np.empty(BLOCK, dtype=np.int64)
    scratch = np.empty(BLOCK, dtype=np.uint32)
    nout = 0
    run = state[0]
    for start in range(0, x.size, BLOCK):
        stop = min(x.size, start + BLOCK)
        if not quantize_block(x, start, stop, kind, scale, buf, scratch):
            state[1] = first_bad(x, start, stop, kind, scale, buf, scratch)
            return nout
        for t in range(stop - start):
            j = buf[t] - wlo
            if j >= 0 and j < width:
                counts[t & mask, j] += 1
            else:
                outliers[nout] = buf[t]
                nout += 1
        if runs:
            for t in range(stop - start):
                if buf[t] == 0:
                    run += 1
                else:
                    b, ones = eg_class(np.uint64(run))
                    run_classes[b, ones] += 1
                    run = 0
    state[0] = run
    return nout


@njit
def write(x, kind, scale, wlo, lut, out_keys, out_lut, long_codes, k_run, words, state):
    """Pass 2: quantize again and append each symbol's codeword.

    ``lut`` (for values wlo, wlo + 1, ...) and ``out_lut`` (for the values
    ``out_keys``) hold codewords packed as code << 8 | length; length 0 means
    a codeword longer than 56 bits, row ``code`` of ``long_codes`` (as made
    by codewords()).  In run mode a zero only lengthens the run; each
    non-zero is preceded by its run's EG-k_run code; ``k_run=None`` is plain
    mode, and numba compiles it without the run code.
    state = [word index, pending bits, pending count, zero run] as uint64.
    """
    width = np.uint64(lut.size)
    buf = np.empty(BLOCK, dtype=np.int64)
    scratch = np.empty(BLOCK, dtype=np.uint32)
    w = np.int64(state[0])
    acc = state[1]
    nacc = np.int64(state[2])
    run = state[3]
    for start in range(0, x.size, BLOCK):
        stop = min(x.size, start + BLOCK)
        quantize_block(x, start, stop, kind, scale, buf, scratch)
        for t in range(stop - start):
            q = buf[t]
            if k_run is not None:
                if q == 0:
                    run += U1
                    continue
                hi, lo, length = eg_code(run, k_run, False, False)
                if length > 64:
                    acc, nacc, word, full = push(acc, nacc, hi, length - 64)
                    if full:
                        words[w] = word
                        w += 1
                    length = 64
                acc, nacc, word, full = push(acc, nacc, lo, length)
                if full:
                    words[w] = word
                    w += 1
                run = U0
            j = np.uint64(q - wlo)
            if j < width:
                code = lut[j]
            else:  # binary search; the value is there, the scan saw it
                a, b = 0, out_keys.size - 1
                while a < b:
                    mid = (a + b) >> 1
                    if out_keys[mid] < q:
                        a = mid + 1
                    else:
                        b = mid
                code = out_lut[a]
            length = np.int64(code & np.uint64(255))
            if length == 0:  # a long codeword
                row = np.int64(code >> np.uint64(8))
                lo, packed = long_codes[row, 0], long_codes[row, 1]
                length = np.int64(packed & np.uint64(255))
                if length > 64:
                    acc, nacc, word, full = push(acc, nacc, packed >> np.uint64(8), length - 64)
                    if full:
                        words[w] = word
                        w += 1
                    length = 64
            else:
                lo = code >> np.uint64(8)
            acc, nacc, word, full = push(acc, nacc, lo, length)
            if full:
                words[w] = word
                w += 1
    state[0] = np.uint64(w)
    state[1] = acc
    state[2] = np.uint64(nacc)
    state[3] = run


@njit
def write_eg_values(values, k, signed, words, state):
    """Append EG-k codes of ``values`` (int64), plus a sign bit for non-zeros if ``signed``.

    Used for the rank table (signed deltas) and the final zero run; state as in write().
    """
    w = np.int64(state[0])
    acc = state[1]
    nacc = np.int64(state[2])
    for i in range(values.size):
        d = values[i]
        hi, lo, length = eg_code(np.uint64(abs(d)), k, signed and d != 0, d < 0)
        if length > 64:
            acc, nacc, word, full = push(acc, nacc, hi, length - 64)
            if full:
                words[w] = word
                w += 1
            length = 64
        acc, nacc, word, full = push(acc, nacc, lo, length)
        if full:
            words[w] = word
            w += 1
    state[0] = np.uint64(w)
    state[1] = acc
    state[2] = np.uint64(nacc)


@njit
def flush(words, state):
    """Write out the pending bits of a finished stream."""
    if state[2] != 0:
        words[np.int64(state[0])] = state[1]


@njit
def read_eg(w32, pos, k):
    """Decode one EG-k code at bit ``pos``, outside hot loops: (v, new pos, ok).

    Readers take the body as big-endian 32-bit words followed by 10 zero words.
    """
    p, o = pos >> 5, pos & 31
    hi = window(w32[p], w32[p + 1], w32[p + 2], o)
    lo = window(w32[p + 2], w32[p + 3], w32[p + 4], o)
    v, length, ok = eg_decode(hi, lo, k)
    return v, pos + length, ok


@njit
def read_table(w32, nbits, size, k):
    """Read the rank table at the start of the body: (values, end position, ok)."""
    table = np.empty(size, dtype=np.uint64)
    prev = np.int64(0)
    pos = 0
    for i in range(size):
        if pos > nbits:
            return table, pos, False
        d, end, ok = read_eg(w32, pos, k)
        if not ok or d >= U1 << U63:
            return table, pos, False
        pos = end
        delta = np.int64(d)
        if delta != 0:
            if w32[pos >> 5] & np.uint32(1 << (31 - (pos & 31))):
                delta = -delta
            pos += 1
        if delta > 0 and prev > (1 << 63) - 1 - delta:
            return table, pos, False
        prev += delta
        if prev < 0:
            return table, pos, False
        table[i] = np.uint64(prev)
    return table, pos, True


@njit
def read(w32, nbits, out, is_float, inv_scale, k, sign, remap, table, k_run, state):
    """Decode out.size symbols; the inverse of write().

    The next bits wait left-aligned in ``bits`` (``nvalid`` of them, refilled
    32 at a time), so the common codeword costs no memory access; one that
    does not fit there is read at its bit position and ``bits`` restarted.
    state = [bit position, zeros still to emit, run expected, symbols left
    in the whole stream, error code] as int64; a non-zero error code stops.
    """
    pos, zleft, need_run, left = state[0], state[1], state[2], state[3]
    size = np.uint64(table.size)
    runs = k_run is not None
    always_signed = sign == SIGN_BIT or (runs and sign != SIGN_ZIGZAG)
    p = pos >> 5
    nvalid = 32 - (pos & 31)
    bits = np.uint64(w32[p]) << np.uint64(64 - nvalid)
    p += 1
    i = 0
    n = out.size
    err = 0
    while i < n:
        if k_run is not None and zleft > 0:
            stop = min(n, i + zleft)
            zleft -= stop - i
            while i < stop:
                out[i] = 0
                i += 1
            continue
        if nvalid < 32:
            bits |= np.uint64(w32[p]) << np.uint64(32 - nvalid)
            p += 1
            nvalid += 32
        pos = 32 * p - nvalid
        if pos > nbits:
            err = ERR_TRUNCATED
            break
        reading_run = False
        order = k
        if k_run is not None:
            if need_run:
                reading_run = True
                order = k_run
        length = 2 * np.int64(leading_zeros(bits)) + 1 + order
        fast = length < nvalid
        if fast:  # the code and a sign bit are in ``bits``
            v = (bits >> np.uint64(64 - length)) - (U1 << np.uint64(order))
            negative = (bits >> np.uint64(63 - length)) & U1
        else:
            o = pos & 31
            q0 = pos >> 5
            hi = window(w32[q0], w32[q0 + 1], w32[q0 + 2], o)
            lo = window(w32[q0 + 2], w32[q0 + 3], w32[q0 + 4], o)
            v, length, ok = eg_decode(hi, lo, order)
            if not ok:
                err = ERR_CODEWORD
                break
            negative = bit_at(hi, lo, length)
        if reading_run:
            if v > np.uint64(left - i):
                err = ERR_RUN
                break
            zleft = np.int64(v)
            need_run = 0
            q = np.int64(0)
        else:
            if remap:
                if v >= size:
                    err = ERR_RANK
                    break
                v = table[v]
            if runs:
                v += U1
            if sign == SIGN_ZIGZAG:
                q = np.int64(v >> U1) ^ -np.int64(v & U1)
            else:
                signed = always_signed or v != 0
                negative &= np.uint64(signed)
                if negative & np.uint64(v == 0):
                    err = ERR_NEGATIVE_ZERO
                    break
                length += np.int64(signed)
                q = np.int64((v ^ (U0 - negative)) + negative)
        if fast:
            bits <<= np.uint64(length)
            nvalid -= length
        else:  # restart the bit buffer after the long code
            pos += length
            p = pos >> 5
            nvalid = 32 - (pos & 31)
            bits = np.uint64(w32[p]) << np.uint64(64 - nvalid)
            p += 1
        if reading_run:
            continue
        if is_float:
            out[i] = np.float64(q) * inv_scale
        else:
            out[i] = q
        i += 1
        need_run = 1
    state[0], state[1], state[2], state[3], state[4] = 32 * p - nvalid, zleft, need_run, left - i, err
