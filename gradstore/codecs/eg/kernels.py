"""The per-element passes of the eg encoder: quantizing and counting (the scan).

Everything here runs once per element, so it is numba and nothing else;
the bit arithmetic lives in bits.py, the writer in write.py, the
decoder in read.py and what is done once per distinct symbol in
plan.py.  Each kernel works on one chunk and keeps its state in a small
array, so callers can feed chunks of any size.

Inputs come as one of two kinds:

* values (float32/float64, or integers up to 64 bits): a block at a time,
  a loop that vectorizes turns each value into its index in a table (see
  table_keys); the serial work that follows reads only those indices;
* bit patterns (any 1- or 2-byte dtype, seen as uint8/uint16): there are at
  most 65536 of them, so codec.py quantizes each pattern once and the kernels
  only count patterns and look up codewords by pattern.

Tables over values (the scan's counters, the writer's codewords) run over
a window of values lo, lo + 1, ..., lo + width - 1 at indices 1..width,
with a sentinel at each end: index 0 for everything below, width + 1 for
everything above, NaN and Inf included.  So the hot loops never test a
range; a sentinel sends its element to the slow path, which looks at the
value itself (exact()).
"""
from __future__ import annotations

import numpy as np

from .bits import U0, U1, eg_class, njit

LIMIT = 1 << 62                 # |quantized value| must stay below this
FLIMIT = float(LIMIT)
FAST = 1 << 51                  # |q| below this: the rounding trick of table_keys is exact
BLOCK = 8192                    # values quantized per vectorized step
COPIES = 4                      # interleaved counters in the scan (elements t, t + 1, ... by turns)
ROUNDER = float(3 << 51)        # 1.5 * 2**52
U2, U3, U4 = np.uint64(2), np.uint64(3), np.uint64(4)


@njit
def table_keys(x, start, n, is_float, scale, lo, size, keys):
    """keys[:n] = where x[start:start + n] go in a table of ``size`` entries over the
    values lo, lo + 1, ... (at 1, 2, ...); the index is the low 32 bits (see idx).

    For floats, y = x * scale + 1.5 * 2**52 rounds x * scale to an integer
    (ties to even), exactly while |x * scale| < 2**51; the window must stay
    inside (-2**51, 2**51) so that every other value lands on a sentinel.
    The index, clamped as a float, is stored as the bits of index + 1.5 * 2**52,
    whose low 32 bits are the index: no float-to-int conversion, which AVX2
    lacks for 64 bits.  A NaN fails ``d > 0`` and lands on index 0.
    """
    xs = x[start:start + n]
    if is_float:
        as_float = keys.view(np.float64)
        off = ROUNDER + np.float64(lo - 1)
        top = np.float64(size - 1)
        for i in range(n):
            d = (np.float64(xs[i]) * scale + ROUNDER) - off
            d = d if d > 0.0 else 0.0
            as_float[i] = (d if d < top else top) + ROUNDER
    else:
        base = np.uint64(lo - 1)
        utop = np.uint64(size - 1)
        for i in range(n):
            j = np.uint64(xs[i]) - base
            keys[i] = np.int64(j if j < utop else utop)


@njit
def idx(keys, t):
    """Table index of element t: a key of table_keys, or a bit pattern."""
    return np.uint32(keys[t])


@njit
def zero_index(lo, size):
    """Index of the value 0 in a table over lo, lo + 1, ...; ``size`` (no index) if outside."""
    j = 1 - lo
    return np.uint32(j if 1 <= j <= size - 2 else size)


@njit
def exact(value, is_float, scale):
    """(q, ok): one element quantized the slow way; ok is False if it cannot be coded."""
    if is_float:
        y = np.float64(value) * scale
        if not abs(y) < FLIMIT:  # also NaN
            return np.int64(0), False
        return np.int64(np.rint(y)), True
    q = np.int64(value)
    return q, (q < LIMIT) & (q > -LIMIT)


@njit
def end_run(zero, run, run_classes):
    """The zero run after one more element: count a run of zeros that ends.

    Runs of no zeros are not counted here: the caller derives them from the
    number of non-zero values, so dense data never touches the table.
    """
    if zero:
        return run + 1
    b, ones = eg_class(np.uint64(run))
    run_classes[b, ones] += 1
    return 0


@njit
def count_block(keys, n, counts, z, run, run_classes):
    """Count the table indices keys[:n], element t in copy t % COPIES of ``counts``, so
    that a run of equal values (zeros) does not chain each increment on the one before.

    With ``run_classes`` (not None), also the zero runs: index ``z`` is the
    zero, ``run`` the run so far; returns the run after the block.
    """
    c0, c1, c2, c3 = counts[0], counts[1], counts[2], counts[3]
    n = np.uint64(n)
    t = U0
    while t + U3 < n:
        j0, j1, j2, j3 = idx(keys, t), idx(keys, t + U1), idx(keys, t + U2), idx(keys, t + U3)
        c0[j0] += 1
        c1[j1] += 1
        c2[j2] += 1
        c3[j3] += 1
        if run_classes is not None:   # one branch for the usual four non-zeros after a non-zero
            if (run != 0) | (j0 == z) | (j1 == z) | (j2 == z) | (j3 == z):
                for j in (j0, j1, j2, j3):
                    zero = j == z
                    if zero | (run != 0):
                        run = end_run(zero, run, run_classes)
        t += U4
    while t < n:
        j = idx(keys, t)
        c0[j] += 1
        if run_classes is not None:
            zero = j == z
            if zero | (run != 0):
                run = end_run(zero, run, run_classes)
        t += U1
    return run


@njit
def count_sparse(keys, n, counts, z, run, run_classes, where, first_index):
    """count_block for mostly zeros: a tight loop skips each run of zeros, counted by
    its length (and its class, with ``run_classes``), and only the non-zeros are
    counted one by one.

    A branch per element on whether it is a zero would be mispredicted at
    every non-zero; here it is once per run, and the counter of zeros, the
    busiest, takes one addition per block instead of one per element.  The
    non-zeros' indices, from ``first_index`` for keys[0], are appended to
    ``where`` (if not None; see passes.NonZeros) while it has room.
    """
    n = np.uint64(n)
    t = U0
    zeros = 0
    found = room = 0
    if where is not None:
        found, room = where[0], where.size - 1
    while t < n:
        first = t
        while t < n and idx(keys, t) == z:
            t += U1
        run += np.int64(t - first)
        zeros += np.int64(t - first)
        if t == n:
            break
        counts[t & U3, idx(keys, t)] += 1
        if run_classes is not None and run:
            b, ones = eg_class(np.uint64(run))
            run_classes[b, ones] += 1
        run = 0
        if where is not None:
            if found < room:                # else the writer will not use the list
                where[found + 1] = first_index + np.int64(t)
            found += 1
        t += U1
    counts[0, z] += zeros
    if where is not None:
        where[0] = found
    return run


@njit
def count(keys, n, counts, z, run, run_classes, inside, sparse, where, first_index):
    """count_block, or count_sparse if ``sparse``; runs only if 0 is ``inside``."""
    if inside and sparse:
        return count_sparse(keys, n, counts, z, run, run_classes, where, first_index)
    if where is not None:
        where[0] = where.size          # nothing listed: the list is not to be used
    return count_block(keys, n, counts, z, run, run_classes if inside else None)


@njit
def outliers_of(x, start, keys, n, counts, is_float, scale, outliers, nout):
    """The elements of a block that fell on a sentinel: quantized the slow way into
    ``outliers`` from ``nout`` on.  Returns (nout, index in the block of the first
    that cannot be coded or -1).  Clears the sentinel counters."""
    top = counts.shape[1] - 1
    if not (counts[:, 0].any() or counts[:, top].any()):
        return nout, -1
    counts[:, 0] = 0
    counts[:, top] = 0
    for t in range(n):
        j = idx(keys, t)
        if j == 0 or j == top:
            q, ok = exact(x[start + t], is_float, scale)
            if not ok:
                return nout, t
            outliers[nout] = q
            nout += 1
    return nout, -1


@njit
def count_runs_exact(x, start, n, is_float, scale, run, run_classes):
    """Zero runs of a block, each value quantized the slow way: for a window without 0."""
    for t in range(n):
        run = end_run(exact(x[start + t], is_float, scale)[0] == 0, run, run_classes)
    return run


@njit
def scan_values(x, offset, is_float, scale, wlo, counts, outliers, nout, run_classes, sparse, where, cache,
                state):
    """Pass 1 for values: quantize, validate, count values and zero runs.

    Values in the window [wlo, wlo + width) are counted in ``counts``
    (COPIES, width + 2), with sentinels (see the module doc); the rest are
    copied to ``outliers`` after the ``nout`` there; returns how many there
    are then (it has room for x.size more).  The first element that
    cannot be coded (NaN, Inf, |q| >= 2**62) stops the scan: its index goes
    to state[1].  state[0] carries the current zero run across chunks;
    ``run_classes=None`` counts no runs (and numba compiles it without).
    ``sparse`` (mostly zeros): count_sparse counts, and lists the non-zeros
    in ``where`` if not None, x[0] being element ``offset`` of the array.
    With a ``cache`` (not None, uint16), the table indices go there too, so
    that the writer does not have to quantize again.
    """
    size = counts.shape[1]
    z = zero_index(wlo, size)
    inside = z < size
    keys = np.empty(BLOCK, dtype=np.int64)
    run = state[0]
    for start in range(0, x.size, BLOCK):
        n = min(x.size - start, BLOCK)
        table_keys(x, start, n, is_float, scale, wlo, size, keys)
        if cache is None:
            run = count(keys, n, counts, z, run, run_classes, inside, sparse, where, offset + start)
        else:
            cached = cache[start:start + n]
            for i in range(n):
                cached[i] = np.uint16(keys[i])
            if sparse:
                run = count(keys, n, counts, z, run, run_classes, inside, sparse, where, offset + start)
            else:                   # counted from the cache: 2 bytes a key, not 8
                run = count(cached, n, counts, z, run, run_classes, inside, sparse, where, offset + start)
        nout, bad = outliers_of(x, start, keys, n, counts, is_float, scale, outliers, nout)
        if bad >= 0:
            state[1] = start + bad
            return nout
        if run_classes is not None and not inside:
            run = count_runs_exact(x, start, n, is_float, scale, run, run_classes)
    state[0] = run
    return nout


@njit
def scan_patterns(x, counts, is_zero, run_classes, state):
    """Pass 1 for bit patterns: count them (``counts`` as in count_block) and the zero runs.

    ``is_zero[p]`` says whether pattern p quantizes to 0; state[0] carries
    the current zero run across chunks, and ``run_classes=None`` counts none.
    """
    if run_classes is None:         # four at a time, as the one-pass writer counts
        count_block(x, x.size, counts, 0, 0, None)
        return
    mask = counts.shape[0] - 1
    run = state[0]
    for t in range(x.size):
        counts[t & mask, x[t]] += 1
        if run_classes is not None:
            zero = is_zero[x[t]]
            if zero | (run != 0):
                run = end_run(zero, run, run_classes)
    state[0] = run


@njit
def merge_patterns(counts, inverse, valid, present, summed):
    """The bit-pattern scan's counters (COPIES, patterns), summed in one pass: present[p]
    whether pattern p occurs, summed[inverse[p]] += its count (``inverse``: the index of
    each pattern's quantized value).  True if a pattern that cannot be coded occurs."""
    bad = False
    c0, c1, c2, c3 = counts[0], counts[1], counts[2], counts[3]
    for p in range(counts.shape[1]):
        c = np.int64(c0[p]) + np.int64(c1[p]) + np.int64(c2[p]) + np.int64(c3[p])
        present[p] = c != 0
        if c:       # most patterns do not occur, in long stretches
            summed[inverse[p]] += c
            bad |= not valid[p]
    return bad
