"""How the eg writer appends codewords: the bit-level helpers and the block emitter.

Codewords come in two tables that plan makes, ``codes`` (uint64) and
``lens`` (uint8): a length of 1..56 is the code itself, and a length above
PAIR a marker: LONG, the code is a row of ``long_codes`` (as made by
plan.pack_codes); ZERO, a zero in run mode, which has no code of its own;
OUT, a sentinel of a table (kernels): the value is outside, the slow
path looks it up.  In run mode a code of 1..56 bits starts with the code of
a run of no zeros, the usual case in dense data (see with_run).  Two
tables, not one packed word: the hot loops then spend no shift or mask to
take a code apart.

The stream is bytes, MSB first.  bits.put keeps fewer than 8 bits
pending and stores 8 bytes at every call, so a code of up to 57 bits costs
no branch, and codes that fit together cost one call: the emitter goes
four, three or two elements at a time (as many as usually fit, see
plan.group_for), and a marker, never fitting, stops it.  Buffers end
with 16 spare bytes.  state = [byte position, pending bits, pending count,
current zero run, next listed non-zero] as uint64, carried across calls.

The hot loops call only helpers that take and return scalars: numba
reference-counts the arrays passed to a call, which in a per-element loop
costs more than the coding.
"""
from __future__ import annotations

import numpy as np
from numba import literally

from .bits import U0, U1, eg_code, njit, put, store_be64, symbol_code
from .kernels import U2, U3, U4, exact, idx

LONG = 255                       # length of a code that is a row of long_codes
ZERO = 254                       # ... of a zero in run mode
OUT = 253                        # ... of a table sentinel: the value is outside the table
PAIR = 56                        # longest pair of codes put at once
FITS = np.uint64(57)             # codes fit one put() when their total length is 1..57


@njit
def piece(hi, lo, low, rest):
    """Bits [low, rest) of the 128 bits hi:lo, rest - low in 1..32."""
    if low >= 64:
        bits = hi >> np.uint64(low - 64)
    elif low == 0:
        bits = lo
    else:
        bits = (lo >> np.uint64(low)) | (hi << np.uint64(64 - low))
    return bits & ((U1 << np.uint64(rest - low)) - U1)


@njit
def put_wide(out, pos, acc, nacc, hi, lo, length):
    """Append a code of up to 128 bits (``hi`` holds the bits above the low 64), 32 at a time."""
    rest = length
    while rest > 0:
        low = (rest - 1) // 32 * 32
        acc, nacc, word, step = put(acc, nacc, piece(hi, lo, low, rest), rest - low)
        store_be64(out, pos, word)
        pos += step
        rest = low
    return pos, acc, nacc


@njit
def put_code(out, pos, acc, nacc, code, length, long_codes):
    """Append one code of 1..56 bits or LONG."""
    if length == LONG:
        row = np.int64(code)
        return put_wide(out, pos, acc, nacc, long_codes[row, 1] >> np.uint64(8), long_codes[row, 0],
                        np.int64(long_codes[row, 1] & np.uint64(255)))
    return put_wide(out, pos, acc, nacc, U0, code, length)


@njit
def with_run(code, length, run, k_run):
    """Run mode, one element's code (see plan.pack_codes): (action, code, length, run).

    Action 0: a zero, the run grows and nothing is appended; 1: append the
    code as it is, starting with its run of no zeros; 2: append the run's
    code, then the code returned, the element's without that start.
    """
    if length == ZERO:
        return 0, code, length, run + U1
    if length == LONG:
        return 2, code, length, run
    if run == 0:
        return 1, code, length, run
    length -= k_run + 1                          # the code without its run of no zeros
    return 2, code & ((U1 << np.uint64(length)) - U1), length, run


@njit
def element_bits(code, length, run, k_run):
    """The bits one element appends, its run's code (run mode: ``k_run`` not None) then its
    own code: (bits, length, run after, fits).  Nothing for a zero; when they do not
    fit in PAIR bits together (a marker never does), put_one() does it."""
    if k_run is None:
        return code, length, run, length <= PAIR
    action, code, length, after = with_run(code, length, run, k_run)
    if action == 0:
        return U0, 0, after, True
    if action == 1:
        return code, length, U0, length <= PAIR
    hi, lo, rlen = eg_code(run, k_run, False, False)
    if length + rlen <= PAIR:       # also rules out LONG
        return (lo << np.uint64(length)) | code, length + rlen, U0, True
    return U0, 0, run, False


@njit
def put_one(out, pos, acc, nacc, code, length, run, k_run, long_codes):
    """Append one element's code, in run mode with its run's code in front
    unless ``k_run`` is None: (pos, acc, nacc, run)."""
    if k_run is None:
        pos, acc, nacc = put_code(out, pos, acc, nacc, code, length, long_codes)
        return pos, acc, nacc, run
    action, code, length, run = with_run(code, length, run, k_run)
    if action == 2:
        hi, lo, rlen = eg_code(run, k_run, False, False)
        pos, acc, nacc = put_wide(out, pos, acc, nacc, hi, lo, rlen)
        run = U0
    if action != 0:
        pos, acc, nacc = put_code(out, pos, acc, nacc, code, length, long_codes)
    return pos, acc, nacc, run


@njit
def outlier_code(q, keys, codes, lens):
    """(code, length) of q in the sorted ``keys``, or ZERO (a zero in run mode) if absent."""
    a, b = 0, keys.size
    while a < b:
        mid = (a + b) >> 1
        if keys[mid] < q:
            a = mid + 1
        else:
            b = mid
    if a < keys.size and keys[a] == q:
        return codes[a], np.int64(lens[a])
    return U0, ZERO


@njit
def emit(keys, n, codes, lens, group, k_run, z, where, zero_runs, src, out, state):
    """Append the codewords of the elements keys[:n] (table indices, see kernels.idx):
    index j has the code codes[j] of lens[j] bits.  emit_until() does all but the
    rare elements, which ``src`` = (x, start, is_float, scale, out_keys, out_codes,
    out_lens, k, sign, long_codes) describes: a sentinel (OUT) is the element
    x[start + t], coded by the ``out_*`` tables or, if k >= 0, as
    symbol_code(q, k, sign); a code too long for put() goes with put_one().
    ``group``, ``k_run``, ``z``, ``where`` and ``zero_runs`` as in emit_until().
    """
    x, start, is_float, scale, out_keys, out_codes, out_lens, k, sign, long_codes = src
    t = 0
    while True:
        # constants for emit_until: each compiles with its own loops only
        if zero_runs and z < lens.size and 1 <= lens[z] <= PAIR:
            t = emit_until(keys, n, codes, lens, 4, k_run, z, where, True, t, out, state)
        elif group == 4:
            t = emit_until(keys, n, codes, lens, 4, k_run, z, where, False, t, out, state)
        elif group == 3:
            t = emit_until(keys, n, codes, lens, 3, k_run, z, where, False, t, out, state)
        else:
            t = emit_until(keys, n, codes, lens, 2, k_run, z, where, False, t, out, state)
        if t == n:
            return
        pos, acc, nacc, run = state[0], state[1], np.int64(state[2]), state[3]
        code, length = codes[idx(keys, t)], np.int64(lens[idx(keys, t)])
        if length == OUT:
            q = exact(x[start + t], is_float, scale)[0]
            if k >= 0:
                hi, lo, length = symbol_code(q, k, sign)
                pos, acc, nacc = put_wide(out, pos, acc, nacc, hi, lo, length)
                length = 0
            else:
                code, length = outlier_code(q, out_keys, out_codes, out_lens)
        if length == ZERO:
            run += U1
        elif length:
            pos, acc, nacc, run = put_one(out, pos, acc, nacc, code, length, run, k_run, long_codes)
        state[0], state[1], state[2], state[3] = pos, acc, np.uint64(nacc), run
        t += 1


@njit
def emit_until(keys, n, codes, lens, group, k_run, z, where, zero_runs, t, out, state):
    """Append the codewords of keys[t:n] up to the first element that needs the slow
    path of emit(): a sentinel, or a code that does not fit one put() with its run's.
    Returns that element, or n.

    ``group``: 4, four codes at a time when they fit in one put, else two
    and two; 3, three at a time; 2, two; what is left one at a time.  In run
    mode (``k_run`` not None) ``z`` is the index of a zero, skipped in a
    tight loop; or, for mostly zeros, ``where`` = (indices of the non-zeros,
    index of keys[0]) from the scan (see passes.NonZeros), and only the
    listed elements are visited, from where[0][state[4]] on.  In plain mode,
    ``zero_runs`` (long runs of zeros, short codes: four at a time): a run,
    skipped the same way, is written as its zeros' codes, up to 56 bits of
    them at a time.  Elements before t have been written, or counted in the
    run.
    """
    literally(group)
    literally(zero_runs)
    pos, acc, nacc, run, i = state[0], state[1], np.int64(state[2]), state[3], np.int64(state[4])
    n = np.uint64(n)
    t = np.uint64(t)
    zlen, per, zeros_word = 1, PAIR, U0
    if zero_runs:                   # ``per`` codes of a zero, in one word
        zlen = np.int64(lens[z])
        per = PAIR // zlen
        for _ in range(per):
            zeros_word = (zeros_word << np.uint64(zlen)) | codes[z]
    while True:
        if where is not None:       # the next non-zero, after its run of zeros
            listed, first_index = where
            if i == listed.size or listed[i] >= first_index + np.int64(n):
                run += n - t
                t = n
                break
            run += np.uint64(listed[i] - first_index) - t
            t = np.uint64(listed[i] - first_index)
            i += 1
        else:
            if run == 0 and group == 4:
                while t + U3 < n:
                    ja, jb, jc, jd = idx(keys, t), idx(keys, t + U1), idx(keys, t + U2), idx(keys, t + U3)
                    if zero_runs and (ja == z) & (jb == z) & (jc == z) & (jd == z):
                        break
                    lb, ld = np.uint64(lens[jb]), np.uint64(lens[jd])
                    ab, cd = np.uint64(lens[ja]) + lb, np.uint64(lens[jc]) + ld
                    first = (codes[ja] << lb) | codes[jb]       # used only if the lengths are
                    second = (codes[jc] << ld) | codes[jd]      # real ones, not markers
                    if ab + cd - U1 < FITS:
                        acc, nacc, word, step = put(acc, nacc, (first << cd) | second, np.int64(ab + cd))
                    elif (ab - U1 < np.uint64(PAIR)) & (cd - U1 < np.uint64(PAIR)):
                        acc, nacc, word, step = put(acc, nacc, first, np.int64(ab))
                        store_be64(out, pos, word)
                        pos += step
                        acc, nacc, word, step = put(acc, nacc, second, np.int64(cd))
                    else:           # a marker (a zero in run mode, say): the first two if they fit
                        if ab - U1 < np.uint64(PAIR):
                            acc, nacc, word, step = put(acc, nacc, first, np.int64(ab))
                            store_be64(out, pos, word)
                            pos += step
                            t += U2
                        break
                    store_be64(out, pos, word)
                    pos += step
                    t += U4
            elif run == 0 and group == 3:
                while t + U2 < n:
                    ja, jb, jc = idx(keys, t), idx(keys, t + U1), idx(keys, t + U2)
                    lb, lc = np.uint64(lens[jb]), np.uint64(lens[jc])
                    abc = np.uint64(lens[ja]) + lb + lc
                    if abc - U1 >= FITS:
                        break
                    acc, nacc, word, step = put(acc, nacc, (((codes[ja] << lb) | codes[jb]) << lc) | codes[jc],
                                                np.int64(abc))
                    store_be64(out, pos, word)
                    pos += step
                    t += U3
            elif run == 0:
                while t + U1 < n:
                    ja, jb = idx(keys, t), idx(keys, t + U1)
                    lb = np.uint64(lens[jb])
                    ab = np.uint64(lens[ja]) + lb
                    if ab - U1 >= np.uint64(PAIR):
                        break
                    acc, nacc, word, step = put(acc, nacc, (codes[ja] << lb) | codes[jb], np.int64(ab))
                    store_be64(out, pos, word)
                    pos += step
                    t += U2
            if k_run is not None or zero_runs:
                begin = t
                while t < n and idx(keys, t) == z:
                    t += U1
                if k_run is not None:
                    run += t - begin
                else:
                    left = np.int64(t - begin)
                    while left > 0:
                        m = min(left, per)
                        acc, nacc, word, step = put(acc, nacc, zeros_word >> np.uint64(zlen * (per - m)), zlen * m)
                        store_be64(out, pos, word)
                        pos += step
                        left -= m
            if t >= n:
                break
        j = idx(keys, t)
        if lens[j] == OUT:
            break
        bits, length, after, fits = element_bits(codes[j], np.int64(lens[j]), run, k_run)
        if not fits:
            break
        run = after
        if length:
            acc, nacc, word, step = put(acc, nacc, bits, length)
            store_be64(out, pos, word)
            pos += step
        t += U1
    state[0], state[1], state[2], state[3], state[4] = pos, acc, np.uint64(nacc), run, np.uint64(i)
    return np.int64(t)
