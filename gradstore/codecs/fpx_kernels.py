"""numba kernels of the ``fpx`` codec: per-chunk rANS over float symbols, raw bytes beside.

Values come in as int64 lanes: 16- and 32-bit floats as their unsigned
views, widened; float64 as its int64 view.  rANS state arithmetic runs in
uint64 (never mixed with int64, which numba would turn into floats).  The
layout these kernels read and write is described in ``fpx.py``.

Decoders never trust the payload: every read is bounds-checked, and a chunk
must end with both rANS states back at their start value and every byte of
its streams used; a failure returns a negative error code that ``fpx.py``
turns into a CodecError.
"""
from __future__ import annotations

import numpy as np
from numba import njit

T = 8                     # symbol bits: the 8 bits after the sign
ZERO = 1 << T             # symbols of +0 and -0: ZERO, ZERO + 1
A = ZERO + 2              # alphabet size
CTX = 2                   # contexts: the previous value was not / was a zero
RANS_L = 1 << 16          # rANS states live in [2**16, 2**32)

E_TABLE = -1              # a frequency table that is malformed or does not sum to 2**scale
E_RANS = -2               # the rANS stream ran out, or did not end where it should
E_RAW = -3                # the raw bytes ran out, or some are left over
E_SIZES = -4              # the chunk directory does not fit the payload


@njit(cache=True, nogil=True)
def _normalize(counts, n, scale, freq):
    """Frequencies summing to 2**scale, each present symbol >= 1; a context never seen gets {0: 2**scale}."""
    M = np.int64(1) << scale
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


@njit(cache=True, nogil=True)
def encode(u, W, scale, chunk, out, sizes, counts):
    """Encode all chunks of ``u`` into ``out``; returns the bytes written.

    ``sizes[c]`` receives the byte lengths of chunk c's tables, rANS words
    and raw bytes; ``counts[c, ctx]`` its symbol counts per context.
    """
    n = u.shape[0]
    M = np.int64(1) << scale
    nb = (W - T) // 8               # raw bytes of a non-zero value: sign, then the low bits
    shift = W - 1 - T
    low = (np.int64(1) << shift) - 1
    absmask = (np.int64(1) << (W - 1)) - 1
    sym = np.empty(chunk, dtype=np.int64)
    raw = np.empty(chunk * nb + 8, dtype=np.uint8)
    freq = np.zeros((CTX, A), dtype=np.int64)
    xmax = np.zeros((CTX, A), dtype=np.uint64)
    rcp = np.zeros((CTX, A), dtype=np.uint64)
    rshift = np.zeros((CTX, A), dtype=np.uint64)
    bias = np.zeros((CTX, A), dtype=np.uint64)
    cmpl = np.zeros((CTX, A), dtype=np.uint64)
    words = np.empty(chunk + 4, dtype=np.uint16)
    p = 0
    c = 0
    for lo in range(0, n, chunk):
        m = min(n, lo + chunk) - lo
        # symbols, counts per context, raw bytes
        q = 0
        for i in range(m):
            v = np.int64(u[lo + i])
            a = v & absmask
            if a == 0:
                s = ZERO + ((v >> (W - 1)) & 1)
            else:
                s = a >> shift
                r = (v & low) | (((v >> (W - 1)) & 1) << shift)
                for b in range(nb):
                    raw[q + b] = (r >> (8 * b)) & 0xFF
                q += nb
            sym[i] = s
            counts[c, 1 if i > 1 and sym[i - 2] >= ZERO else 0, s] += 1
        # tables, and the encoder's view of them (ryg's reciprocal form of x / f)
        start = p
        for k in range(CTX):
            _normalize(counts[c, k], counts[c, k].sum(), scale, freq[k])
            present = 0
            for s in range(A):
                if freq[k, s] > 0:
                    present += 1
            p = _put_varint(out, p, present)
            prev = -1
            acc = np.int64(0)
            for s in range(A):
                f = freq[k, s]
                if f == 0:
                    continue
                p = _put_varint(out, p, s - prev - 1)
                p = _put_varint(out, p, f - 1)
                prev = s
                xmax[k, s] = np.uint64(f) << np.uint64(32 - scale)
                cmpl[k, s] = np.uint64(M - f)
                if f < 2:
                    rcp[k, s] = np.uint64(0xFFFFFFFF)
                    rshift[k, s] = np.uint64(0)
                    bias[k, s] = np.uint64(acc + M - 1)
                else:
                    sh = 0
                    while f > (np.int64(1) << sh):
                        sh += 1
                    rcp[k, s] = np.uint64(((np.int64(1) << (sh + 31)) + f - 1) // f)
                    rshift[k, s] = np.uint64(sh - 1)
                    bias[k, s] = np.uint64(acc)
                acc += f
        sizes[c, 0] = p - start
        # rANS, backwards, two states interleaved on even and odd positions
        x0 = np.uint64(RANS_L)
        x1 = np.uint64(RANS_L)
        w = words.shape[0]
        for i in range(m - 1, -1, -1):
            s = sym[i]
            k = 1 if i > 1 and sym[i - 2] >= ZERO else 0
            x = x1 if i & 1 else x0
            if x >= xmax[k, s]:
                w -= 1
                words[w] = x & np.uint64(0xFFFF)
                x >>= np.uint64(16)
            qq = ((x * rcp[k, s]) >> np.uint64(32)) >> rshift[k, s]
            x = x + bias[k, s] + qq * cmpl[k, s]
            if i & 1:
                x1 = x
            else:
                x0 = x
        for x in (x1, x0):          # x0 ends up first: the decoder reads it first
            w -= 1
            words[w] = (x >> np.uint64(16)) & np.uint64(0xFFFF)
            w -= 1
            words[w] = x & np.uint64(0xFFFF)
        start = p
        for k in range(w, words.shape[0]):
            out[p] = words[k] & 0xFF
            out[p + 1] = words[k] >> 8
            p += 2
        sizes[c, 1] = p - start
        out[p:p + q] = raw[:q]
        p += q
        sizes[c, 2] = q
        c += 1
    return p


@njit(cache=True, nogil=True)
def _read_tables(buf, p, end, scale, dec):
    """Fill the decoding table of both contexts from buf[p:end]; 0 or E_TABLE.

    One int64 per context and slot: frequency << 32 | (slot - cumulative) << 16 | symbol.
    """
    M = np.int64(1) << scale
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
def _symbols(buf, p, end, x0, x1, scale, dec, sym, m):
    """rANS-decode m symbols into sym; (status, position after the words)."""
    M = np.int64(1) << scale
    mask = M - 1
    k0 = np.int64(0)
    k1 = np.int64(0)
    i = 0
    while i < m:
        e = dec[k0 + (x0 & mask)]
        s = e & 0xFFFF
        x0 = (e >> 32) * (x0 >> scale) + ((e >> 16) & 0xFFFF)
        if x0 < RANS_L:
            if p + 2 > end:
                return E_RANS, p
            x0 = (x0 << 16) | np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8)
            p += 2
        sym[i] = s
        k0 = M if s >= ZERO else 0
        i += 1
        if i == m:
            break
        e = dec[k1 + (x1 & mask)]
        s = e & 0xFFFF
        x1 = (e >> 32) * (x1 >> scale) + ((e >> 16) & 0xFFFF)
        if x1 < RANS_L:
            if p + 2 > end:
                return E_RANS, p
            x1 = (x1 << 16) | np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8)
            p += 2
        sym[i] = s
        k1 = M if s >= ZERO else 0
        i += 1
    if x0 != RANS_L or x1 != RANS_L or p != end:
        return E_RANS, p
    return 0, p


@njit(cache=True, nogil=True)
def _assemble(buf, q, sym, m, W, out):
    """Values from symbols and raw bytes (checked to be exactly enough); nb is 1, 3 or 7."""
    shift = W - 1 - T
    low = (np.int64(1) << shift) - 1
    nb = (W - T) // 8
    for i in range(m):
        s = sym[i]
        if s >= ZERO:
            out[i] = (s - ZERO) << (W - 1)
            continue
        if nb == 1:
            r = np.int64(buf[q])
        elif nb == 3:
            r = np.int64(buf[q]) | (np.int64(buf[q + 1]) << 8) | (np.int64(buf[q + 2]) << 16)
        else:
            r = np.int64(buf[q])
            for b in range(1, nb):
                r |= np.int64(buf[q + b]) << (8 * b)
        q += nb
        out[i] = ((r >> shift) << (W - 1)) | (s << shift) | (r & low)


@njit(cache=True, nogil=True)
def decode(buf, p, sizes, n, W, scale, chunk, out):
    """Decode the chunks starting at ``buf[p]`` into ``out``; 0 or a negative error code."""
    M = np.int64(1) << scale
    nb = (W - T) // 8
    dec = np.empty(CTX * M, dtype=np.int64)
    sym = np.empty(chunk, dtype=np.int64)
    end_all = buf.shape[0]
    c = 0
    for lo in range(0, n, chunk):
        m = min(n, lo + chunk) - lo
        t_end = p + sizes[c, 0]
        r_end = t_end + sizes[c, 1]
        b_end = r_end + sizes[c, 2]
        if b_end > end_all or sizes[c, 1] < 8 or sizes[c, 1] % 2:
            return E_SIZES
        status = _read_tables(buf, p, t_end, scale, dec)
        if status:
            return status
        p = t_end
        x0 = np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8) | (np.int64(buf[p + 2]) << 16) \
            | (np.int64(buf[p + 3]) << 24)
        x1 = np.int64(buf[p + 4]) | (np.int64(buf[p + 5]) << 8) | (np.int64(buf[p + 6]) << 16) \
            | (np.int64(buf[p + 7]) << 24)
        status, p = _symbols(buf, p + 8, r_end, x0, x1, scale, dec, sym, m)
        if status:
            return status
        nonzero = 0                 # raw bytes: exactly nb per non-zero symbol
        for i in range(m):
            nonzero += sym[i] < ZERO
        if nonzero * nb != b_end - r_end:
            return E_RAW
        _assemble(buf, r_end, sym, m, W, out[lo:lo + m])
        p = b_end
        c += 1
    return 0
