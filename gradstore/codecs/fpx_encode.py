"""numba kernels of the ``fpx`` encoder: symbols and raw bytes, tables, rANS (layout in ``fpx.py``)."""
from __future__ import annotations

import numpy as np
from numba import njit

from .fpx_kernels import A, CTX, NS, RANS_L, SCALE, T, ZERO, _normalize, _put_varint, lane_bits


@njit(cache=True, nogil=True)
def _split(u, lo, m, sym, raw, counts):
    """Pass 1 over a chunk: table row (context * A + symbol) of each value, its count, raw bytes;
    returns the raw length.

    Counted in one histogram per state, added up at the end: a run of equal
    symbols then increments four counters in turn rather than one, which
    would wait on its own previous increment every time.
    """
    W = lane_bits(u)
    nb = (W - T) // 8               # raw bytes of a non-zero value: sign, then the low bits
    shift = W - 1 - T
    low = (np.int64(1) << shift) - 1
    absmask = (np.int64(1) << (W - 1)) - 1
    q = 0
    ks = np.zeros(NS, dtype=np.int64)   # context of each state's next position
    hist = np.zeros((NS, CTX * A), dtype=np.int64)
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
        hist[np.uint64(j), np.uint64(row)] += 1
        ks[np.uint64(j)] = A if s >= ZERO else 0
    for row in range(CTX * A):
        counts[row] += hist[0, row] + hist[1, row] + hist[2, row] + hist[3, row]
    return q


@njit(cache=True, nogil=True)
def _put_tables(freq, out, p, enc):
    """Write both contexts' tables at out[p]; fill the encoder's rows (ryg's reciprocal form of x / f)."""
    M = np.int64(1) << SCALE
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
            enc[row, 0] = np.uint64(f) << np.uint64(31 - SCALE)      # x_max
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


@njit(inline="always")
def _put(enc, words, row, x, w):
    """Encode the symbol of table row ``row`` into state ``x``, writing the word
    due, if any, at words[w - 1]; (x, w) after it.

    No branch: words[w - 1] is written either way (a word not due is
    overwritten later), and w moves only when it is due.  Whether a word is
    due follows no pattern a branch predictor can learn.  words[w - 1] is
    always in bounds: a symbol carries at most SCALE < 16 bits, so the words
    of a chunk and the final states fill at most 3/4 of its chunk + 4 slots.
    """
    words[np.uint64(w - 1)] = x & np.uint64(0xFFFF)
    due = x >= enc[row, 0]
    w -= 1 if due else 0
    x = (x >> np.uint64(16)) if due else x
    x = x + enc[row, 4] + (((x * enc[row, 1]) >> np.uint64(32)) >> enc[row, 2]) * enc[row, 3]
    return x, w


@njit(cache=True, nogil=True)
def _rans(sym, m, enc, words):
    """rANS-encode sym[:m] backwards, state i % NS for position i; returns the first word."""
    x0 = x1 = x2 = x3 = np.uint64(RANS_L)
    w = words.shape[0]
    i = m - 1
    while i >= 0 and (i & 3) != 3:  # the last, incomplete group
        row = np.uint64(sym[np.uint64(i)])
        j = i & 3
        if j == 0:
            x0, w = _put(enc, words, row, x0, w)
        elif j == 1:
            x1, w = _put(enc, words, row, x1, w)
        else:
            x2, w = _put(enc, words, row, x2, w)
        i -= 1
    while i > 0:
        x3, w = _put(enc, words, np.uint64(sym[np.uint64(i)]), x3, w)
        x2, w = _put(enc, words, np.uint64(sym[np.uint64(i - 1)]), x2, w)
        x1, w = _put(enc, words, np.uint64(sym[np.uint64(i - 2)]), x1, w)
        x0, w = _put(enc, words, np.uint64(sym[np.uint64(i - 3)]), x0, w)
        i -= 4
    for x in (x3, x2, x1, x0):      # x0 ends up first: the decoder reads it first
        w -= 1
        words[np.uint64(w)] = (x >> np.uint64(16)) & np.uint64(0xFFFF)
        w -= 1
        words[np.uint64(w)] = x & np.uint64(0xFFFF)
    return w


@njit(cache=True, nogil=True)
def encode(u, chunk, out, sizes, counts):
    """Encode all chunks of ``u`` into ``out``; returns the bytes written.

    ``sizes[c]`` receives the byte lengths of chunk c's tables, rANS words
    and raw bytes; ``counts[c, ctx]`` its symbol counts per context.
    """
    n = u.shape[0]
    nb = (lane_bits(u) - T) // 8
    sym = np.empty(chunk, dtype=np.uint16)   # table rows, < CTX * A
    raw = np.empty(chunk * nb + 8, dtype=np.uint8)
    freq = np.zeros((CTX, A), dtype=np.int64)
    enc = np.zeros((CTX * A, 5), dtype=np.uint64)
    words = np.empty(chunk + 4, dtype=np.uint16)
    p = 0
    c = 0
    for lo in range(0, n, chunk):
        m = min(n, lo + chunk) - lo
        q = _split(u, lo, m, sym, raw, counts[c].reshape(CTX * A))
        for k in range(CTX):
            _normalize(counts[c, k], counts[c, k].sum(), freq[k])
        start = p
        p = _put_tables(freq, out, p, enc)
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
