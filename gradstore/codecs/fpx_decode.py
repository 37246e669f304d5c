"""numba kernels of the ``fpx`` decoder: tables, then rANS and raw bytes in one pass per chunk.

Every read is bounds-checked against the payload, a group of reads at a
time where that is enough; see ``fpx_kernels`` for the error codes.  Each
chunk is decoded by the loop that suits it, chosen from its tables
(``chunk_mode``): the same values come out of every loop.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .fpx_kernels import (A, CTX, E_RANS, E_RAW, E_SIZES, E_TABLE, NS, RANS_L, SCALE, T, ZERO, _get_varint,
                          lane_bits)


@njit(cache=True, nogil=True)
def _read_tables(buf, p, end, dec, zeros):
    """Fill the decoding table of both contexts from buf[p:end], and ``zeros`` with
    each context's frequency of the zero symbols; 0 or E_TABLE.

    One int64 per context and slot: frequency << 32 | (slot - cumulative) << 16 | symbol.
    """
    M = np.int64(1) << SCALE
    for k in range(CTX):
        zeros[k] = 0
        present, p = _get_varint(buf, p, end)
        if present < 1 or present > A:
            return E_TABLE
        s = -1
        acc = np.int64(0)
        for _ in range(present):
            gap, p = _get_varint(buf, p, end)
            f, p = _get_varint(buf, p, end)
            if gap < 0 or f < 0:
                return E_TABLE
            s += gap + 1
            f += 1
            if s >= A or acc + f > M:
                return E_TABLE
            for slot in range(acc, acc + f):
                dec[k * M + slot] = (f << 32) | ((slot - acc) << 16) | s
            zeros[k] += f if s >= ZERO else 0
            acc += f
        if acc != M:
            return E_TABLE
    return 0 if p == end else E_TABLE


@njit(inline="always")
def _raw(buf, q, nb):
    """The ``nb`` raw bytes of a value at buf[q], little-endian."""
    if nb == 3:
        return np.int64(buf[np.uint64(q)]) | (np.int64(buf[np.uint64(q + 1)]) << 8) \
            | (np.int64(buf[np.uint64(q + 2)]) << 16)
    r = np.int64(buf[np.uint64(q)])
    for b in range(1, nb):
        r |= np.int64(buf[np.uint64(q + b)]) << (8 * b)
    return r


@njit(inline="always")
def _lookup(dec, k, x):
    """State ``x``'s symbol in context ``k`` and the state after it, before any
    renormalisation: (x, symbol)."""
    e = dec[np.uint64(k + (x & ((np.int64(1) << SCALE) - 1)))]
    return (e >> 32) * (x >> SCALE) + ((e >> 16) & 0xFFFF), e & 0xFFFF


@njit(inline="always")
def _state(buf, dec, k, x, p):
    """One rANS step of state ``x`` in context ``k``, unchecked: (x, symbol, p) after it."""
    x, s = _lookup(dec, k, x)
    w = np.int64(buf[np.uint64(p)]) | (np.int64(buf[np.uint64(p + 1)]) << 8)
    renorm = x < RANS_L
    x = ((x << 16) | w) if renorm else x
    p += 2 if renorm else 0
    return x, s, p


@njit(inline="always")
def _nonzero(out, r, s):
    """The non-zero value of symbol ``s`` and raw bits ``r`` (sign on top), as a lane of ``out``."""
    W = lane_bits(out)
    shift = W - 1 - T
    return ((r >> shift) << (W - 1)) | (s << shift) | (r & ((np.int64(1) << shift) - 1))


@njit(inline="always")
def _step(buf, dec, out, i, x, k, p, q):
    """Decode the value at ``i`` with state ``x`` in context ``k``, reading the
    rANS stream at buf[p] and the raw bytes at buf[q]; (x, k, p, q) after it.

    No bounds checks and no branches: the caller makes sure that a word and
    one value's raw bytes can be read (a value that takes neither reads them
    all the same), and each choice is a select, since whether a state needs
    a word, and in a chunk with zeros whether a value is one, follows no
    pattern a branch predictor can learn.
    """
    W = lane_bits(out)
    nb = (W - T) // 8
    x, s, p = _state(buf, dec, k, x, p)
    r = _raw(buf, q, nb)
    zero = s >= ZERO
    out[np.uint64(i)] = ((s - ZERO) << (W - 1)) if zero else _nonzero(out, r, s)
    q += 0 if zero else nb
    k = (np.int64(1) << SCALE) if zero else np.int64(0)
    return x, k, p, q


@njit(inline="always")
def _dense(buf, dec, out, i, x, p, q):
    """``_step`` in a chunk without zeros: context 0, one value's raw bytes at buf[q] each."""
    x, s, p = _state(buf, dec, np.int64(0), x, p)
    out[np.uint64(i)] = _nonzero(out, _raw(buf, q, (lane_bits(out) - T) // 8), s)
    return x, p


@njit(inline="always")
def _branchy(buf, dec, out, i, x, k, p, q):
    """``_step`` with branches, for chunks of mostly zeros, where they predict well."""
    W = lane_bits(out)
    x, s = _lookup(dec, k, x)
    if x < RANS_L:
        x = (x << 16) | np.int64(buf[np.uint64(p)]) | (np.int64(buf[np.uint64(p + 1)]) << 8)
        p += 2
    if s >= ZERO:
        out[np.uint64(i)] = (s - ZERO) << (W - 1)
        return x, np.int64(1) << SCALE, p, q
    nb = (W - T) // 8
    out[np.uint64(i)] = _nonzero(out, _raw(buf, q, nb), s)
    return x, np.int64(0), p, q + nb


# How a chunk's groups are decoded, chosen from its tables.  In real gradient
# buckets a chunk is either free of zeros or nearly all zeros (rows of the
# embedding that no token touched), rarely in between.
DENSE = 0     # no zero symbol in context 0, so no zero at all: no context to follow, raw bytes in step
MIXED = 1     # some zeros: branch-free groups
SPARSE = 2    # mostly zeros (context 1 codes a zero 15 times in 16 or more): branches predict well


@njit(cache=True, nogil=True)
def chunk_mode(zeros):
    """DENSE, MIXED or SPARSE, from each context's frequency of the zero symbols (``_read_tables``)."""
    if zeros[0] == 0:
        return DENSE
    return SPARSE if zeros[1] * 16 >= 15 * (np.int64(1) << SCALE) else MIXED


@njit(cache=True, nogil=True)
def _chunk(buf, p, end, q_end, dec, out, lo, m, mode):
    """Decode one chunk: the NS states, then the symbols from buf[p:end], each non-zero
    value's raw bytes from buf[end:q_end]; 0 or a negative error code.

    Groups of NS values, one per state, go unchecked (``_dense`` or ``_step``,
    by ``mode``) while the streams hold what a group can take at most; the
    rest (a SPARSE chunk: all of it) is decoded value by value with every
    read checked.
    """
    W = lane_bits(out)
    M = np.int64(1) << SCALE
    nb = (W - T) // 8
    x = np.empty(NS, dtype=np.int64)
    for j in range(NS):
        x[j] = np.int64(buf[np.uint64(p)]) | (np.int64(buf[np.uint64(p + 1)]) << 8) \
            | (np.int64(buf[np.uint64(p + 2)]) << 16) | (np.int64(buf[np.uint64(p + 3)]) << 24)
        p += 4
    x0, x1, x2, x3 = x[0], x[1], x[2], x[3]
    k0 = k1 = k2 = k3 = np.int64(0)
    q = end
    i = lo
    m += lo
    if mode == DENSE:
        if q_end - q != (m - lo) * nb:    # every value has its raw bytes
            return E_RAW
        while i + NS <= m and p + 2 * NS <= end:
            x0, p = _dense(buf, dec, out, i, x0, p, q)
            x1, p = _dense(buf, dec, out, i + 1, x1, p, q + nb)
            x2, p = _dense(buf, dec, out, i + 2, x2, p, q + 2 * nb)
            x3, p = _dense(buf, dec, out, i + 3, x3, p, q + 3 * nb)
            q += NS * nb
            i += NS
    elif mode == MIXED:
        while i + NS <= m and p + 2 * NS <= end and q + NS * nb <= q_end:
            x0, k0, p, q = _step(buf, dec, out, i, x0, k0, p, q)
            x1, k1, p, q = _step(buf, dec, out, i + 1, x1, k1, p, q)
            x2, k2, p, q = _step(buf, dec, out, i + 2, x2, k2, p, q)
            x3, k3, p, q = _step(buf, dec, out, i + 3, x3, k3, p, q)
            i += NS
    else:
        while i + NS <= m and p + 2 * NS <= end and q + NS * nb <= q_end:
            x0, k0, p, q = _branchy(buf, dec, out, i, x0, k0, p, q)
            x1, k1, p, q = _branchy(buf, dec, out, i + 1, x1, k1, p, q)
            x2, k2, p, q = _branchy(buf, dec, out, i + 2, x2, k2, p, q)
            x3, k3, p, q = _branchy(buf, dec, out, i + 3, x3, k3, p, q)
            i += NS
    # The rest, value by value (i is a multiple of NS past lo: value t has state t % NS).
    x[0], x[1], x[2], x[3] = x0, x1, x2, x3
    ks = np.empty(NS, dtype=np.int64)
    ks[0], ks[1], ks[2], ks[3] = k0, k1, k2, k3
    for t in range(i, m):
        j = (t - lo) % NS
        xj, s = _lookup(dec, ks[j], x[j])
        if xj < RANS_L:
            if p + 2 > end:
                return E_RANS
            xj = (xj << 16) | np.int64(buf[np.uint64(p)]) | (np.int64(buf[np.uint64(p + 1)]) << 8)
            p += 2
        x[j] = xj
        if s >= ZERO:
            out[np.uint64(t)] = (s - ZERO) << (W - 1)
            ks[j] = M
        else:
            ks[j] = 0
            if q + nb > q_end:
                return E_RAW
            out[np.uint64(t)] = _nonzero(out, _raw(buf, q, nb), s)
            q += nb
    for j in range(NS):
        if x[j] != RANS_L:
            return E_RANS
    if p != end:
        return E_RANS
    return 0 if q == q_end else E_RAW


@njit(cache=True, nogil=True)
def decode(buf, p, sizes, n, chunk, out):
    """Decode the chunks starting at ``buf[p]`` into ``out``; 0 or a negative error code."""
    M = np.int64(1) << SCALE
    dec = np.empty(CTX * M, dtype=np.int64)
    zeros = np.empty(CTX, dtype=np.int64)
    end_all = buf.shape[0]
    c = 0
    for lo in range(0, n, chunk):
        m = min(n, lo + chunk) - lo
        t_end = p + sizes[c, 0]
        r_end = t_end + sizes[c, 1]
        b_end = r_end + sizes[c, 2]
        if b_end > end_all or sizes[c, 1] < 4 * NS or sizes[c, 1] % 2:
            return E_SIZES
        status = _read_tables(buf, p, t_end, dec, zeros)
        if status:
            return status
        status = _chunk(buf, t_end, r_end, b_end, dec, out, lo, m, chunk_mode(zeros))
        if status:
            return status
        p = b_end
        c += 1
    return 0
