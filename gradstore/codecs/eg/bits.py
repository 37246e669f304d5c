"""Bit-level arithmetic of the eg codec: codewords, bit buffers and code lengths.

Scalars in, scalars out: numba reference-counts every array passed to a
call, and in a per-symbol loop that alone costs more than the coding (a
writer that passed its buffer to a helper per pair of codes ran 5x
slower).  The kernel loops load and store; these helpers compute, and LLVM
inlines them.  The two intrinsics are the exception that proves it: plain
loads and stores, 8 unaligned bytes at a time.  The few helpers over
arrays here run once per distinct symbol, not per element.
"""
from __future__ import annotations

import sys

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.cpython.unsafe.numbers import leading_zeros
from numba.extending import intrinsic

from . import notice  # noqa: F401  (says so on stderr when these kernels are compiled)

KMAX = 62                       # largest order: v < 2**63 keeps v + 2**k below 2**64
SIGN_BIT, SIGN_BIT_NONZERO, SIGN_ZIGZAG = 0, 1, 2   # sign modes, as in the header's flags

U0 = np.uint64(0)
U1 = np.uint64(1)
U63 = np.uint64(63)

njit = nb.njit(cache=True, nogil=True)


@njit
def bitlen(v):
    """Number of significant bits of a uint64 (0 for 0)."""
    return 64 - np.int64(leading_zeros(v))


@intrinsic
def load_be64(typingctx, buf, index):
    """buf[index:index + 8] (a uint8 array) as a big-endian uint64, whatever the alignment."""
    def codegen(context, builder, signature, args):
        ptr = _byte_pointer(context, builder, signature.args[0], args[0], args[1])
        value = builder.load(ptr, align=1)
        return builder.bswap(value) if sys.byteorder == "little" else value
    return types.uint64(buf, index), codegen


@intrinsic
def store_be64(typingctx, buf, index, value):
    """buf[index:index + 8] (a uint8 array) = the uint64 ``value``, big-endian, whatever the alignment."""
    def codegen(context, builder, signature, args):
        ptr = _byte_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(builder.bswap(args[2]) if sys.byteorder == "little" else args[2], ptr, align=1)
        return context.get_dummy_value()
    return types.none(buf, index, types.uint64), codegen


@intrinsic
def float_bits(typingctx, value):
    """The bits of a float64, as a uint64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.uint64(types.float64), codegen


def _byte_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), ir.IntType(64).as_pointer())


@njit
def put(acc, nacc, code, length):
    """Append the low ``length`` (1..57) bits of ``code`` to ``nacc`` (0..7) pending bits.

    Pending bits sit at the bottom of ``acc`` (above them: stale bits that
    shift out).  Returns (acc, nacc, word, step): the caller stores ``word``
    with store_be64 at its byte position and advances that by ``step``
    whole bytes, so there is no branch; the pending bits of a partial byte
    are stored again by the next store.
    """
    acc = (acc << np.uint64(length)) | code
    nacc += length
    return acc, nacc & 7, acc << np.uint64(64 - nacc), np.uint64(nacc >> 3)


@njit
def eg_code(v, k, signed, negative):
    """(hi, lo, length) of EG-k of v (v < 2**63), then a sign bit if ``signed``."""
    m = v + (U1 << np.uint64(k))
    length = 2 * bitlen(m) - 1 - k
    if signed:
        return m >> U63, (m << U1) | (U1 if negative else U0), length + 1
    return U0, m, length


@njit
def symbol_code(q, k, sign):
    """eg_code of quantized value q in sign mode ``sign`` (no remap, no runs)."""
    if sign == SIGN_ZIGZAG:
        return eg_code(np.uint64((q << 1) ^ (q >> 63)), k, False, False)
    return eg_code(np.uint64(abs(q)), k, sign == SIGN_BIT or q != 0, q < 0)


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
def code_bits(q, k, sign):
    """Total length of the codewords of the quantized values q in sign mode ``sign``, order k."""
    total = 0
    for i in range(q.size):
        total += symbol_code(q[i], k, sign)[2]
    return total


@njit
def group_sorted(v, counts):
    """The distinct values of the sorted ``v``, their summed ``counts``, and the index of
    each element's value among them: (unique, sums, group)."""
    unique = np.empty(v.size, dtype=v.dtype)
    sums = np.zeros(v.size, dtype=counts.dtype)
    group = np.empty(v.size, dtype=np.intp)
    m = -1
    for i in range(v.size):
        if i == 0 or v[i] != v[i - 1]:
            m += 1
            unique[m] = v[i]
        sums[m] += counts[i]
        group[i] = m
    return unique[:m + 1], sums[:m + 1], group


@njit
def counted_values(counts, lo):
    """The values lo, lo + 1, ... that ``counts`` (copies, values) counted, and how often."""
    keys = np.empty(counts.shape[1], dtype=np.int64)
    sums = np.empty(counts.shape[1], dtype=np.int64)
    m = 0
    for j in range(counts.shape[1]):   # branch-free: about half the values of a window occur
        c = 0
        for copy in range(counts.shape[0]):
            c += np.int64(counts[copy, j])
        keys[m] = lo + j
        sums[m] = c
        m += c != 0
    return keys[:m], sums[:m]
