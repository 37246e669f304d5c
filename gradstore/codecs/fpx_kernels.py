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
CTX = 2                   # contexts: the value NS positions back was not / was a zero
NS = 4                    # interleaved rANS states, one per position modulo NS
RANS_L = 1 << 15          # rANS states live in [2**15, 2**31): the reciprocal division is exact there

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
def _split(u, lo, m, W, sym, raw, counts):
    """Pass 1 over a chunk: table row (context * A + symbol) of each value, its count, raw bytes;
    returns the raw length."""
    nb = (W - T) // 8               # raw bytes of a non-zero value: sign, then the low bits
    shift = W - 1 - T
    low = (np.int64(1) << shift) - 1
    absmask = (np.int64(1) << (W - 1)) - 1
    q = 0
    ks = np.zeros(NS, dtype=np.int64)   # context of each state's next position
    for i in range(m):
        v = np.int64(u[np.uint64(lo + i)])
        a = v & absmask
        if a == 0:
            s = ZERO + ((v >> (W - 1)) & 1)
        else:
            s = a >> shift
            r = (v & low) | (((v >> (W - 1)) & 1) << shift)
            if nb == 1:
                raw[np.uint64(q)] = r
            elif nb == 3:
                raw[np.uint64(q)] = r & 0xFF
                raw[np.uint64(q + 1)] = (r >> 8) & 0xFF
                raw[np.uint64(q + 2)] = r >> 16
            else:
                for b in range(nb):
                    raw[np.uint64(q + b)] = (r >> (8 * b)) & 0xFF
            q += nb
        j = i & (NS - 1)
        row = ks[np.uint64(j)] + s
        sym[np.uint64(i)] = row
        counts[np.uint64(row)] += 1
        ks[np.uint64(j)] = A if s >= ZERO else 0
    return q


@njit(cache=True, nogil=True)
def _put_tables(freq, scale, out, p, enc):
    """Write both contexts' tables at out[p]; fill the encoder's rows (ryg's reciprocal form of x / f)."""
    M = np.int64(1) << scale
    for k in range(CTX):
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
            row = k * A + s
            enc[row, 0] = np.uint64(f) << np.uint64(31 - scale)      # x_max
            enc[row, 3] = np.uint64(M - f)                          # complement
            if f < 2:
                enc[row, 1] = np.uint64(0xFFFFFFFF)                 # reciprocal
                enc[row, 2] = np.uint64(0)                          # its shift
                enc[row, 4] = np.uint64(acc + M - 1)                # bias
            else:
                sh = 0
                while f > (np.int64(1) << sh):
                    sh += 1
                enc[row, 1] = np.uint64(((np.int64(1) << (sh + 31)) + f - 1) // f)
                enc[row, 2] = np.uint64(sh - 1)
                enc[row, 4] = np.uint64(acc)
            acc += f
    return p


@njit(cache=True, nogil=True)
def _rans(sym, m, enc, words):
    """rANS-encode sym[:m] backwards, state i % NS for position i; returns the first word.

    The step is written out per state: numba leaves tuple-returning helpers slow here.
    """
    x0 = x1 = x2 = x3 = np.uint64(RANS_L)
    w = words.shape[0]
    i = m - 1
    while i >= 0 and (i & 3) != 3:  # the last, incomplete group
        j = i & 3
        if j == 0:
            row = np.uint64(sym[np.uint64(i)])
            if x0 >= enc[row, 0]:
                w -= 1
                words[np.uint64(w)] = x0 & np.uint64(0xFFFF)
                x0 >>= np.uint64(16)
            x0 = x0 + enc[row, 4] + (((x0 * enc[row, 1]) >> np.uint64(32)) >> enc[row, 2]) * enc[row, 3]
        elif j == 1:
            row = np.uint64(sym[np.uint64(i)])
            if x1 >= enc[row, 0]:
                w -= 1
                words[np.uint64(w)] = x1 & np.uint64(0xFFFF)
                x1 >>= np.uint64(16)
            x1 = x1 + enc[row, 4] + (((x1 * enc[row, 1]) >> np.uint64(32)) >> enc[row, 2]) * enc[row, 3]
        else:
            row = np.uint64(sym[np.uint64(i)])
            if x2 >= enc[row, 0]:
                w -= 1
                words[np.uint64(w)] = x2 & np.uint64(0xFFFF)
                x2 >>= np.uint64(16)
            x2 = x2 + enc[row, 4] + (((x2 * enc[row, 1]) >> np.uint64(32)) >> enc[row, 2]) * enc[row, 3]
        i -= 1
    while i > 0:
        row = np.uint64(sym[np.uint64(i)])
        if x3 >= enc[row, 0]:
            w -= 1
            words[np.uint64(w)] = x3 & np.uint64(0xFFFF)
            x3 >>= np.uint64(16)
        x3 = x3 + enc[row, 4] + (((x3 * enc[row, 1]) >> np.uint64(32)) >> enc[row, 2]) * enc[row, 3]
        row = np.uint64(sym[np.uint64(i - 1)])
        if x2 >= enc[row, 0]:
            w -= 1
            words[np.uint64(w)] = x2 & np.uint64(0xFFFF)
            x2 >>= np.uint64(16)
        x2 = x2 + enc[row, 4] + (((x2 * enc[row, 1]) >> np.uint64(32)) >> enc[row, 2]) * enc[row, 3]
        row = np.uint64(sym[np.uint64(i - 2)])
        if x1 >= enc[row, 0]:
            w -= 1
            words[np.uint64(w)] = x1 & np.uint64(0xFFFF)
            x1 >>= np.uint64(16)
        x1 = x1 + enc[row, 4] + (((x1 * enc[row, 1]) >> np.uint64(32)) >> enc[row, 2]) * enc[row, 3]
        row = np.uint64(sym[np.uint64(i - 3)])
        if x0 >= enc[row, 0]:
            w -= 1
            words[np.uint64(w)] = x0 & np.uint64(0xFFFF)
            x0 >>= np.uint64(16)
        x0 = x0 + enc[row, 4] + (((x0 * enc[row, 1]) >> np.uint64(32)) >> enc[row, 2]) * enc[row, 3]
        i -= 4
    for x in (x3, x2, x1, x0):      # x0 ends up first: the decoder reads it first
        w -= 1
        words[np.uint64(w)] = (x >> np.uint64(16)) & np.uint64(0xFFFF)
        w -= 1
        words[np.uint64(w)] = x & np.uint64(0xFFFF)
    return w


@njit(cache=True, nogil=True)
def encode(u, W, scale, chunk, out, sizes, counts):
    """Encode all chunks of ``u`` into ``out``; returns the bytes written.

    ``sizes[c]`` receives the byte lengths of chunk c's tables, rANS words
    and raw bytes; ``counts[c, ctx]`` its symbol counts per context.
    """
    n = u.shape[0]
    nb = (W - T) // 8
    sym = np.empty(chunk, dtype=np.int64)
    raw = np.empty(chunk * nb + 8, dtype=np.uint8)
    freq = np.zeros((CTX, A), dtype=np.int64)
    enc = np.zeros((CTX * A, 5), dtype=np.uint64)
    words = np.empty(chunk + 4, dtype=np.uint16)
    p = 0
    c = 0
    for lo in range(0, n, chunk):
        m = min(n, lo + chunk) - lo
        q = _split(u, lo, m, W, sym, raw, counts[c].reshape(CTX * A))
        for k in range(CTX):
            _normalize(counts[c, k], counts[c, k].sum(), scale, freq[k])
        start = p
        p = _put_tables(freq, scale, out, p, enc)
        sizes[c, 0] = p - start
        w = _rans(sym, m, enc, words)
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
def _chunk(buf, p, end, q_end, scale, dec, W, out, lo, m):
    """Decode one chunk: the NS states, then the symbols from buf[p:end], each non-zero
    value's raw bytes from buf[end:q_end]; 0 or a negative error code.

    The step is written out per state: numba leaves tuple-returning helpers slow here.
    """
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
    if i < m:
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
    if i + 1 < m:
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
    if i + 2 < m:
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
    if p != end or x0 != RANS_L or x1 != RANS_L or x2 != RANS_L or x3 != RANS_L:
        return E_RANS
    return 0 if q == q_end else E_RAW


@njit(cache=True, nogil=True)
def decode(buf, p, sizes, n, W, scale, chunk, out):
    """Decode the chunks starting at ``buf[p]`` into ``out``; 0 or a negative error code."""
    M = np.int64(1) << scale
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
        status = _read_tables(buf, p, t_end, scale, dec)
        if status:
            return status
        status = _chunk(buf, t_end, r_end, b_end, scale, dec, W, out, lo, m)
        if status:
            return status
        p = b_end
        c += 1
    return 0
