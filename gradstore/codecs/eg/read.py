"""The eg decoder's per-symbol kernels: the inverse of kernels.

The body is read as bytes followed by at least 32 zero bytes: every read
looks at most 17 bytes past the bit it starts at, which is never more than
63 bits past the end (the reader stops at the first symbol that starts
past it).  Each symbol is decoded from the 57 or more bits at its position,
one unaligned load, so that the common codeword costs a count of leading
zeros and a few shifts; a run of no zeros in front of a value (run mode)
is recognised without one, and the value decoded from the same bits.
"""
from __future__ import annotations

import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from .bits import SIGN_BIT, SIGN_ZIGZAG, U0, U1, U63, bit_at, eg_decode, float_bits, load_be64, njit

FAST = 57                      # bits that load_bits always gives

# read() error codes, turned into messages by codec.py
ERR_TRUNCATED, ERR_CODEWORD, ERR_NEGATIVE_ZERO, ERR_RANK, ERR_RUN = 1, 2, 3, 4, 5


@njit
def load_bits(body, pos):
    """The bits of ``body`` from bit ``pos``, MSB first; the top 57 at least are right."""
    return load_be64(body, pos >> 3) << np.uint64(pos & 7)


@njit
def peek(body, pos):
    """The 64 bits of ``body`` from bit ``pos``."""
    o = pos & 7
    return load_bits(body, pos) | (np.uint64(body[(pos >> 3) + 8]) >> np.uint64(8 - o))


@njit
def read_slow(body, pos, k):
    """Decode EG-k at bit ``pos``, codes of any length: (v, length, next bit, ok)."""
    hi = peek(body, pos)
    lo = peek(body, pos + 64)
    v, length, ok = eg_decode(hi, lo, k)
    return v, length, bit_at(hi, lo, length) if ok else U0, ok


@njit
def read_eg(body, pos, k):
    """Decode one EG-k code at bit ``pos``, outside hot loops: (v, new pos, ok)."""
    v, length, _, ok = read_slow(body, pos, k)
    return v, pos + length, ok


@njit
def read_table(body, nbits, size, k):
    """Read the rank table at the start of the body: (values, end position, ok)."""
    table = np.empty(size, dtype=np.uint64)
    prev = np.int64(0)
    pos = 0
    for i in range(size):
        if pos > nbits:
            return table, pos, False
        d, length, negative, ok = read_slow(body, pos, k)
        if not ok or d >= U1 << U63:
            return table, pos, False
        pos += length
        delta = np.int64(d)
        if delta != 0:
            if negative:
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
def taken(bits, avail, used, fast):
    """Plain mode: the loaded bits after a symbol took ``used`` of them (the next code may
    be there too), or none left if the symbol was read the slow way."""
    if fast:
        return bits << np.uint64(used), avail - used
    return bits, 0


@njit
def read(body, nbits, out, is_float, inv_scale, k, sign, remap, table, k_run, state):
    """Decode out.size symbols; the inverse of kernels.emit.

    In run mode a value's run code and its own code usually sit in the same
    64 bits, so both come out of one fetch; in plain mode (``k_run=None``)
    the codes that follow in the fetched bits are decoded from them, and the
    next fetch waits for a code that is not whole there: a load is then off
    the chain from one code's length to the next code's start.
    state = [bit position, zeros still to emit, run expected, symbols left
    in the whole stream, error code] as int64; a non-zero error code stops.
    """
    pos, zleft, need_run, left = state[0], state[1], state[2], state[3]
    size = np.uint64(table.size)
    always_signed = sign == SIGN_BIT or (k_run is not None and sign != SIGN_ZIGZAG)
    top = U1 << np.uint64(k)
    i = 0
    n = out.size
    err = 0
    bits, avail = U0, 0       # plain mode: bits still unread from the last load, and how many
    while i < n:
        if k_run is not None and zleft > 0:
            stop = min(n, i + zleft)
            zleft -= stop - i
            while i < stop:
                out[i] = 0
                i += 1
            continue
        if pos >= nbits:  # a symbol needs at least one bit
            err = ERR_TRUNCATED
            break
        if k_run is not None or 2 * np.int64(leading_zeros(bits)) + 1 + k >= avail:
            bits = load_bits(body, pos)     # the next code is not whole in what is left: load
            avail = FAST
        if k_run is not None and need_run:
            need_run = 0
            if bits >> np.uint64(63 - k_run) == U1 << np.uint64(k_run):  # no zeros, the usual in dense data
                rlen = k_run + 1
            else:
                rlen = 2 * np.int64(leading_zeros(bits)) + 1 + k_run
                if rlen <= 32:
                    run = (bits >> np.uint64(64 - rlen)) - (U1 << np.uint64(k_run))
                else:
                    run, rlen, _, ok = read_slow(body, pos, k_run)
                    if not ok:
                        err = ERR_CODEWORD
                        break
                if run > np.uint64(left - i):
                    err = ERR_RUN
                    break
                if run:
                    pos += rlen
                    if pos > nbits:
                        err = ERR_TRUNCATED
                        break
                    zleft = np.int64(run)
                    continue
            pos += rlen
            bits <<= np.uint64(rlen)
            avail -= rlen
        length = 2 * np.int64(leading_zeros(bits)) + 1 + k
        fast = length < avail
        if fast:  # the code and the bit after it are in ``bits``
            v = (bits >> np.uint64(64 - length)) - top
            negative = (bits >> np.uint64(63 - length)) & U1
        else:
            v, length, negative, ok = read_slow(body, pos, k)
            if not ok:
                err = ERR_CODEWORD
                break
        if sign == SIGN_ZIGZAG or always_signed:  # the next code does not wait for the table
            used = length + (0 if sign == SIGN_ZIGZAG else 1)
            pos += used
            if k_run is None:
                bits, avail = taken(bits, avail, used, fast)
        if remap:
            if v >= size:
                err = ERR_RANK
                break
            v = table[v]
        if k_run is not None:
            v += U1
        if sign == SIGN_ZIGZAG:
            q = np.int64(v >> U1) ^ -np.int64(v & U1)
        else:
            if not always_signed:
                signed = v != 0
                negative &= np.uint64(signed)
                pos += length + np.int64(signed)
                if k_run is None:
                    bits, avail = taken(bits, avail, length + np.int64(signed), fast)
            if negative & np.uint64(v == 0):
                err = ERR_NEGATIVE_ZERO
                break
            q = np.int64((v ^ (U0 - negative)) + negative)
        if pos > nbits:
            err = ERR_TRUNCATED
            break
        if is_float:
            out[i] = np.float64(q) * inv_scale
        else:
            out[i] = q
        i += 1
        need_run = 1
    state[0], state[1], state[2], state[3], state[4] = pos, zleft, need_run, left - i, err


# (exponent bits, mantissa bits) of the 2-byte floats the decoder narrows to itself
HALF, BFLOAT = (5, 10), (8, 7)


@njit
def narrow_bits(y, exp_bits, man_bits):
    """The bit pattern of y (finite float64, or +-inf) rounded to a float of ``exp_bits``
    and ``man_bits`` bits, to nearest, ties to even, as numpy's astype from float64
    does for float16 and ml_dtypes' for bfloat16: one rounding, subnormals and
    overflow to inf included.  Integer arithmetic only.
    """
    b = float_bits(y)
    bias = (1 << (exp_bits - 1)) - 1
    inf = np.uint64(((1 << exp_bits) - 1) << man_bits)
    field = np.int64((b >> np.uint64(52)) & np.uint64(0x7FF))
    m53 = (b & np.uint64((1 << 52) - 1)) | np.uint64(1 << 52)
    # the exponent in the target, at least its smallest normal one (subnormals: a longer shift)
    e = field - 1023 + bias
    shift = 52 - man_bits + (1 - e if e < 1 else 0)
    shift = shift if shift < 60 else 60           # beyond 54 the value rounds to 0 anyway
    r = m53 >> np.uint64(shift)
    rest = m53 & ((U1 << np.uint64(shift)) - U1)
    half = U1 << np.uint64(shift - 1)
    r += np.uint64((rest > half) | ((rest == half) & ((r & U1) == U1)))
    # r includes the implicit bit: adding it to the exponent field below e carries into it
    # (a carry of the rounding, too, even into inf)
    p = (np.uint64(e - 1 if e > 1 else 0) << np.uint64(man_bits)) + r
    if field == 0:                                 # zero or a float64 subnormal: far below
        p = U0
    if p > inf or field == 0x7FF or e >= (1 << exp_bits) - 1:
        p = inf
    return np.uint16(p | ((b >> U63) << np.uint64(exp_bits + man_bits)))


@njit
def narrow(y, out, exp_bits, man_bits):
    """out[:] = narrow_bits of y[:]: a pass of its own, which vectorizes (inside read(),
    it costs the decoder more than this pass)."""
    for i in range(y.size):
        out[i] = narrow_bits(y[i], exp_bits, man_bits)
