"""numba kernels of the ``fpx`` decoder: tables, then rANS and raw bytes in one pass per chunk.

Every read is bounds-checked against the payload; see ``fpx_kernels`` for the error codes.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .fpx_kernels import (A, CTX, E_RANS, E_RAW, E_SIZES, E_TABLE, NS, RANS_L, SCALE, T, ZERO, _get_varint,
                          lane_bits)


@njit(cache=True, nogil=True)
def _read_tables(buf, p, end, dec):
    """Fill the decoding table of both contexts from buf[p:end]; 0 or E_TABLE.

    One int64 per context and slot: frequency << 32 | (slot - cumulative) << 16 | symbol.
    """
    M = np.int64(1) << SCALE
    for k in range(CTX):
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
            acc += f
        if acc != M:
            return E_TABLE
    return 0 if p == end else E_TABLE


@njit(cache=True, nogil=True)
def _chunk(buf, p, end, q_end, dec, out, lo, m):
    """Decode one chunk: the NS states, then the symbols from buf[p:end], each non-zero
    value's raw bytes from buf[end:q_end]; 0 or a negative error code.

    The step is written out per state: numba leaves tuple-returning helpers slow here.
    """
    W = lane_bits(out)
    scale = SCALE
    M = np.int64(1) << scale
    mask = M - 1
    nb = (W - T) // 8
    shift = W - 1 - T
    low = (np.int64(1) << shift) - 1
    x = np.empty(NS, dtype=np.int64)
    for j in range(NS):
        x[j] = np.int64(buf[np.uint64(p)]) | (np.int64(buf[np.uint64(p + 1)]) << 8) | (np.int64(buf[np.uint64(p + 2)]) << 16) \
            | (np.int64(buf[np.uint64(p + 3)]) << 24)
        p += 4
    x0, x1, x2, x3 = x[0], x[1], x[2], x[3]
    k0 = k1 = k2 = k3 = np.int64(0)
    q = end
    i = lo
    m += lo
    while i + 4 <= m:
        e = dec[np.uint64(k0 + (x0 & mask))]
        x0 = (e >> 32) * (x0 >> scale) + ((e >> 16) & 0xFFFF)
        if x0 < RANS_L:
            if p + 2 > end:
                return E_RANS
            x0 = (x0 << 16) | np.int64(buf[np.uint64(p)]) | (np.int64(buf[np.uint64(p + 1)]) << 8)
            p += 2
        s = e & 0xFFFF
        if s >= ZERO:
            out[np.uint64(i)] = (s - ZERO) << (W - 1)
            k0 = M
        else:
            k0 = 0
            if q + nb > q_end:
                return E_RAW
            if nb == 3:
                r = np.int64(buf[np.uint64(q)]) | (np.int64(buf[np.uint64(q + 1)]) << 8) | (np.int64(buf[np.uint64(q + 2)]) << 16)
            elif nb == 1:
                r = np.int64(buf[np.uint64(q)])
            else:
                r = np.int64(buf[np.uint64(q)])
                for b in range(1, nb):
                    r |= np.int64(buf[q + b]) << (8 * b)
            q += nb
            out[np.uint64(i)] = ((r >> shift) << (W - 1)) | (s << shift) | (r & low)
        e = dec[np.uint64(k1 + (x1 & mask))]
        x1 = (e >> 32) * (x1 >> scale) + ((e >> 16) & 0xFFFF)
        if x1 < RANS_L:
            if p + 2 > end:
                return E_RANS
            x1 = (x1 << 16) | np.int64(buf[np.uint64(p)]) | (np.int64(buf[np.uint64(p + 1)]) << 8)
            p += 2
        s = e & 0xFFFF
        if s >= ZERO:
            out[np.uint64(i + 1)] = (s - ZERO) << (W - 1)
            k1 = M
        else:
            k1 = 0
            if q + nb > q_end:
                return E_RAW
            if nb == 3:
                r = np.int64(buf[np.uint64(q)]) | (np.int64(buf[np.uint64(q + 1)]) << 8) | (np.int64(buf[np.uint64(q + 2)]) << 16)
            elif nb == 1:
                r = np.int64(buf[np.uint64(q)])
            else:
                r = np.int64(buf[np.uint64(q)])
                for b in range(1, nb):
                    r |= np.int64(buf[q + b]) << (8 * b)
            q += nb
            out[np.uint64(i + 1)] = ((r >> shift) << (W - 1)) | (s << shift) | (r & low)
        e = dec[np.uint64(k2 + (x2 & mask))]
        x2 = (e >> 32) * (x2 >> scale) + ((e >> 16) & 0xFFFF)
        if x2 < RANS_L:
            if p + 2 > end:
                return E_RANS
            x2 = (x2 << 16) | np.int64(buf[np.uint64(p)]) | (np.int64(buf[np.uint64(p + 1)]) << 8)
            p += 2
        s = e & 0xFFFF
        if s >= ZERO:
            out[np.uint64(i + 2)] = (s - ZERO) << (W - 1)
            k2 = M
        else:
            k2 = 0
            if q + nb > q_end:
                return E_RAW
            if nb == 3:
                r = np.int64(buf[np.uint64(q)]) | (np.int64(buf[np.uint64(q + 1)]) << 8) | (np.int64(buf[np.uint64(q + 2)]) << 16)
            elif nb == 1:
                r = np.int64(buf[np.uint64(q)])
            else:
                r = np.int64(buf[np.uint64(q)])
                for b in range(1, nb):
                    r |= np.int64(buf[q + b]) << (8 * b)
            q += nb
            out[np.uint64(i + 2)] = ((r >> shift) << (W - 1)) | (s << shift) | (r & low)
        e = dec[np.uint64(k3 + (x3 & mask))]
        x3 = (e >> 32) * (x3 >> scale) + ((e >> 16) & 0xFFFF)
        if x3 < RANS_L:
            if p + 2 > end:
                return E_RANS
            x3 = (x3 << 16) | np.int64(buf[np.uint64(p)]) | (np.int64(buf[np.uint64(p + 1)]) << 8)
            p += 2
        s = e & 0xFFFF
        if s >= ZERO:
            out[np.uint64(i + 3)] = (s - ZERO) << (W - 1)
            k3 = M
        else:
            k3 = 0
            if q + nb > q_end:
                return E_RAW
            if nb == 3:
                r = np.int64(buf[np.uint64(q)]) | (np.int64(buf[np.uint64(q + 1)]) << 8) | (np.int64(buf[np.uint64(q + 2)]) << 16)
            elif nb == 1:
                r = np.int64(buf[np.uint64(q)])
            else:
                r = np.int64(buf[np.uint64(q)])
                for b in range(1, nb):
                    r |= np.int64(buf[q + b]) << (8 * b)
            q += nb
            out[np.uint64(i + 3)] = ((r >> shift) << (W - 1)) | (s << shift) | (r & low)
        i += 4
    # The last m % 4 values, state by state (rare: no need to unroll).
    x[0], x[1], x[2], x[3] = x0, x1, x2, x3
    ks = np.empty(NS, dtype=np.int64)
    ks[0], ks[1], ks[2], ks[3] = k0, k1, k2, k3
    for j in range(m - i):
        e = dec[np.uint64(ks[j] + (x[j] & mask))]
        xj = (e >> 32) * (x[j] >> scale) + ((e >> 16) & 0xFFFF)
        if xj < RANS_L:
            if p + 2 > end:
                return E_RANS
            xj = (xj << 16) | np.int64(buf[np.uint64(p)]) | (np.int64(buf[np.uint64(p + 1)]) << 8)
            p += 2
        x[j] = xj
        s = e & 0xFFFF
        if s >= ZERO:
            out[np.uint64(i + j)] = (s - ZERO) << (W - 1)
        else:
            if q + nb > q_end:
                return E_RAW
            r = np.int64(buf[np.uint64(q)])
            for b in range(1, nb):
                r |= np.int64(buf[q + b]) << (8 * b)
            q += nb
            out[np.uint64(i + j)] = ((r >> shift) << (W - 1)) | (s << shift) | (r & low)
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
    end_all = buf.shape[0]
    c = 0
    for lo in range(0, n, chunk):
        m = min(n, lo + chunk) - lo
        t_end = p + sizes[c, 0]
        r_end = t_end + sizes[c, 1]
        b_end = r_end + sizes[c, 2]
        if b_end > end_all or sizes[c, 1] < 4 * NS or sizes[c, 1] % 2:
            return E_SIZES
        status = _read_tables(buf, p, t_end, dec)
        if status:
            return status
        status = _chunk(buf, t_end, r_end, b_end, dec, out, lo, m)
        if status:
            return status
        p = b_end
        c += 1
    return 0
