"""Bit-level arithmetic of the eg codec: codewords, bit buffers and code lengths.

Scalars in, scalars out: numba reference-counts every array passed to a
call, and in a per-symbol loop that alone costs more than the coding.  The
loops in eg_kernels.py load and store; these helpers compute, and LLVM
inlines them.  The few helpers over arrays here run once per distinct
symbol, not per element.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

KMAX = 62                       # largest order: v < 2**63 keeps v + 2**k below 2**64

U0 = np.uint64(0)
U1 = np.uint64(1)
U63 = np.uint64(63)

njit = nb.njit(cache=True, nogil=True)


@njit
def bitlen(v):
    """Number of significant bits of a uint64 (0 for 0)."""
    return 64 - np.int64(leading_zeros(v))


@njit
def push(acc, nacc, value, nbits):
    """Append the low ``nbits`` (1..64) bits of ``value`` to ``nacc`` (0..63) pending bits.

    Pending bits sit left-aligned in ``acc``.  Returns (acc, nacc, word,
    full): when ``full`` the caller stores ``word`` and moves to the next.
    """
    free = 64 - nacc
    if nbits < free:
        return acc | (value << np.uint64(free - nbits)), nacc + nbits, U0, False
    rest = nbits - free
    word = acc | (value >> np.uint64(rest))
    if rest == 0:
        return U0, 0, word, True
    return value << np.uint64(64 - rest), rest, word, True


@njit
def eg_code(v, k, signed, negative):
    """(hi, lo, length) of EG-k of v (v < 2**63), then a sign bit if ``signed``."""
    m = v + (U1 << np.uint64(k))
    length = 2 * bitlen(m) - 1 - k
    if signed:
        return m >> U63, (m << U1) | (U1 if negative else U0), length + 1
    return U0, m, length


@njit
def window(a, b, c, offset):
    """The 64 bits starting ``offset`` (0..31) bits into the 32-bit words a, b, c."""
    top = (np.uint64(a) << np.uint64(32)) | np.uint64(b)
    return (top << np.uint64(offset)) | (np.uint64(c) >> np.uint64(32 - offset))


@njit
def eg_decode(hi, lo, k):
    """Decode EG-k at the start of the 128 bits hi, lo: (v, length, ok)."""
    if hi == 0:
        return U0, 0, False
    zeros = np.int64(leading_zeros(hi))
    nb_m = zeros + 1 + k
    if nb_m > 64:
        return U0, 0, False
    length = zeros + nb_m
    if length <= 64:
        m = hi >> np.uint64(64 - length)
    else:  # length <= 127, so both shifts are in 1..63
        m = (hi << np.uint64(length - 64)) | (lo >> np.uint64(128 - length))
    return m - (U1 << np.uint64(k)), length, True


@njit
def bit_at(hi, lo, i):
    """Bit ``i`` (0..127) of the 128 bits hi, lo."""
    if i < 64:
        return (hi >> np.uint64(63 - i)) & U1
    return (lo >> np.uint64(127 - i)) & U1


@njit
def eg_class(v):
    """(bit length, leading ones) of v: together they fix the EG-k length for every k.

    So a 65x65 table of counts gives the exact size of any order without
    keeping the values.
    """
    if v == 0:
        return 0, 0
    b = bitlen(v)
    return b, np.int64(leading_zeros(~(v << np.uint64(64 - b))))


@njit
def add_classes(classes, values, counts):
    """Count distinct ``values`` occurring ``counts`` times into a class table."""
    for i in range(values.size):
        b, ones = eg_class(values[i])
        classes[b, ones] += counts[i]


@njit
def sizes_by_order(classes):
    """Total code length in bits for each order k = 0..KMAX."""
    sizes = np.zeros(KMAX + 1, dtype=np.int64)
    for b in range(65):
        for ones in range(b + 1):
            c = classes[b, ones]
            if c == 0:
                continue
            for k in range(KMAX + 1):
                if k >= b:
                    sizes[k] += c * (k + 1)
                else:
                    top = b - 1 + (1 if ones >= b - k else 0)
                    sizes[k] += c * (2 * top + 1 - k)
    return sizes


@njit
def codewords(v, signed, negative, k, codes):
    """Fill ``codes`` with each symbol's codeword as (low 64 bits, high bits << 8 | length)."""
    for i in range(v.size):
        hi, lo, length = eg_code(v[i], k, signed[i], negative[i])
        codes[i, 0] = lo
        codes[i, 1] = (hi << np.uint64(8)) | np.uint64(length)
