"""Everything the eg encoder decides once per tensor, from its histogram.

The scan pass (passes.Source.scan) leaves a histogram of the quantized values
and of the zero runs.  From it alone this module derives, exactly and
without trial encodings: the symbol each value is coded as (sign mode,
rank remap), the order k that minimises the size, the rank table, the total
number of bits, and the codeword of every distinct value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bits import (KMAX, SIGN_BIT, SIGN_ZIGZAG, U1, add_classes, counted_values, eg_code,
                   group_sorted, njit, sizes_by_order, symbol_code)
from .emit import LONG, OUT, PAIR, ZERO
from ..stats import entropy_bits


@dataclass
class Histogram:
    """What the scan pass counted: distinct quantized values and zero runs."""

    keys: np.ndarray          # distinct quantized values, int64, ascending
    counts: np.ndarray        # how often each occurs, int64
    window: tuple[int, int] = (0, 0)        # (lo, width): the values the scan counted in a table
    run_classes: np.ndarray | None = None   # (65, 65) classes of the zero runs, final run included

    @classmethod
    def from_scan(cls, window: np.ndarray, wlo: int, out_keys: np.ndarray,
                  out_counts: np.ndarray) -> Histogram:
        """From the scan's (copies, width) counters and its sorted outliers (all outside the window)."""
        keys, counts = counted_values(window, wlo)
        if out_keys.size:
            below = np.searchsorted(out_keys, wlo)
            keys = np.concatenate([out_keys[:below], keys, out_keys[below:]])
            counts = np.concatenate([out_counts[:below], counts, out_counts[below:]])
        return cls(keys, counts, (wlo, window.shape[1]))


@dataclass
class Plan:
    """How one tensor will be written; sizes are exact."""

    k: int
    k_run: int
    k_table: int
    table: np.ndarray         # uint64 symbols in rank order (empty without remap)
    table_deltas: np.ndarray  # int64 differences of ``table``, as written
    table_bits: int
    value_bits: int
    run_bits: int
    lut_lo: int               # value at index 1 of the lut_* tables
    lut_codes: np.ndarray     # codewords (as emit takes them) of the values lut_lo, lut_lo + 1, ...
    lut_lens: np.ndarray      # at 1, 2, ..., with sentinels at both ends (see kernels)
    out_keys: np.ndarray      # values outside the lut span, ascending
    out_codes: np.ndarray     # their codewords
    out_lens: np.ndarray
    long_codes: np.ndarray    # (n, 2) codewords longer than 56 bits
    entropy_bits: float
    nsymbols: int
    scattered: bool           # run mode: non-zeros mostly alone between zeros (see passes.NonZeros)

    @property
    def nbits(self) -> int:
        return self.table_bits + self.value_bits + self.run_bits

    @property
    def group(self) -> int:
        """How many codes the writer should try to put at a time (see emit.emit_until)."""
        return group_for((self.value_bits + self.run_bits) / max(self.nsymbols, 1))


def group_for(bits: float) -> int:
    """How many codes of ``bits`` on average the writer should put at a time: as many as
    fit one put (57 bits) nearly always, for real gradients."""
    return 4 if bits <= 11 else 3 if bits <= 15 else 2


def merge_counts(keys_a: np.ndarray, counts_a: np.ndarray,
                 keys_b: np.ndarray, counts_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Add two (distinct keys, counts) histograms."""
    keys, inverse = np.unique(np.concatenate([keys_a, keys_b]), return_inverse=True)
    counts = np.zeros(keys.size, dtype=np.int64)
    np.add.at(counts, inverse, np.concatenate([counts_a, counts_b]))
    return keys, counts


def best_order(classes: np.ndarray, kmax: int = KMAX) -> tuple[int, int]:
    """The order k with the fewest bits (smallest k on ties), and that size."""
    sizes = sizes_by_order(classes)[:kmax + 1]
    k = int(np.argmin(sizes))
    return k, int(sizes[k])


@njit
def coded_symbols(keys, counts, sign, runs):
    """(keys, v, signed, negative, weights, signed weight) of the values coded (in run
    mode the zeros are not: they are runs): v is what EG codes, then the sign bit if
    ``signed``; v shifts down by one in run mode, where a value is never 0."""
    n = keys.size
    if runs:
        n -= np.count_nonzero(keys == 0)
    ckeys = np.empty(n, dtype=np.int64)
    v = np.empty(n, dtype=np.uint64)
    signed = np.empty(n, dtype=np.bool_)
    negative = np.empty(n, dtype=np.bool_)
    weights = np.empty(n, dtype=np.int64)
    signed_weight = 0
    m = 0
    for i in range(keys.size):
        q = np.int64(keys[i])
        if runs and q == 0:
            continue
        if sign == SIGN_ZIGZAG:
            s = np.uint64((q << 1) ^ (q >> 63))
            sg = False
        else:
            s = np.uint64(abs(q))
            sg = sign == SIGN_BIT or runs or q != 0
        if runs:
            s -= U1
        ckeys[m], v[m], signed[m], negative[m], weights[m] = q, s, sg, q < 0, counts[i]
        if sg:
            signed_weight += counts[i]
        m += 1
    return ckeys, v, signed, negative, weights, signed_weight


@njit
def ranked(v, weights, by_value):
    """Rank remap: (table, ranks, deltas, k_table, table_bits).  The table holds the
    symbols by descending frequency (ties: smaller first), each v becomes its rank,
    and the table is written as EG-k_table deltas with a sign bit for the non-zero.
    ``by_value``: v's stable argsort."""
    if v.size == 0:
        return v, v, np.zeros(0, dtype=np.int64), 0, 0
    unique, freq, group = group_sorted(v[by_value], weights[by_value].astype(np.uint64))
    inverse = np.empty(v.size, dtype=np.intp)
    inverse[by_value] = group
    order = np.argsort(freq.max() - freq, kind="mergesort")     # stable: ties by value
    rank = np.empty(unique.size, dtype=np.uint64)
    for r in range(order.size):
        rank[order[r]] = r
    table = unique[order]
    deltas = table.astype(np.int64)
    deltas[1:] -= deltas[:-1].copy()
    sizes = value_sizes(np.abs(deltas).astype(np.uint64), np.ones(deltas.size, dtype=np.int64))
    k_table = np.argmin(sizes)
    return table, rank[inverse], deltas, k_table, sizes[k_table] + np.count_nonzero(deltas)


@njit
def value_sizes(v, weights):
    """Bits of the symbols v, occurring ``weights`` times, at each order k (signs not included)."""
    classes = np.zeros((65, 65), dtype=np.int64)
    add_classes(classes, v, weights)
    return sizes_by_order(classes)


def fixed_plan(hist: Histogram, *, k: int, sign: int) -> Plan:
    """The plan of a fixed k without remap or runs, sizes only: the writer made its own codewords."""
    return make_plan(hist, k=k, sign=sign, remap=False, runs=False, codes=False)


def make_plan(hist: Histogram, *, k: int | str, sign: int, remap: bool, runs: bool,
              codes: bool = True) -> Plan:
    """Choose orders and codewords (unless not ``codes``) for a histogram; all sizes exact."""
    keys, counts = hist.keys, hist.counts
    ckeys, v, signed, negative, weights, signed_weight = coded_symbols(keys, counts, sign, runs)
    table, deltas = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    k_table = table_bits = 0
    if remap:
        # (numpy's stable argsort merges the few ascending runs v comes in; numba's sorts it all)
        table, v, deltas, k_table, table_bits = ranked(v, weights, np.argsort(v, kind="stable"))
    sizes = value_sizes(v, weights)
    if k == "auto":
        k = int(np.argmin(sizes)) if weights.size else 0
    value_bits = int(sizes[k]) + int(signed_weight)

    k_run, run_bits = best_order(hist.run_classes) if runs else (0, 0)

    lut_lo, width = hist.window
    if codes:   # (numpy's zeros come from calloc: the pages of a wide window no value falls in stay untouched)
        lut_codes, lut_lens = np.zeros(width + 2, dtype=np.uint64), np.full(width + 2, ZERO, dtype=np.uint8)
        lut_lens[[0, -1]] = OUT
        out_keys, out_codes, out_lens, long_codes = \
            code_tables(ckeys, v, signed, negative, k, k_run if runs else -1, lut_lo, lut_codes, lut_lens)
    else:  # the writer makes its own codewords
        lut_lo, out_keys, long_codes = 0, keys[:0], np.zeros((0, 2), dtype=np.uint64)
        lut_codes = out_codes = np.zeros(0, np.uint64)
        lut_lens = out_lens = np.zeros(0, np.uint8)
    return Plan(k=k, k_run=k_run, k_table=int(k_table), table=table, table_deltas=deltas,
                table_bits=int(table_bits), value_bits=value_bits, run_bits=run_bits,
                lut_lo=lut_lo, lut_codes=lut_codes, lut_lens=lut_lens, out_keys=out_keys, out_codes=out_codes,
                out_lens=out_lens, long_codes=long_codes, entropy_bits=entropy_bits(counts),
                nsymbols=int(counts.sum()), scattered=runs and 2 * int(hist.run_classes[1:].sum()) > weights.sum())


def fixed_codes(values: np.ndarray, k: int, sign: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codewords (as pack_codes) of quantized ``values`` for a fixed k, no remap, no runs."""
    _, v, signed, negative, _, _ = coded_symbols(values, values, sign, False)   # (no counts: weights unused)
    return pack_codes(v, signed, negative, k, -1)


def window_codes(lo: int, width: int, k: int, sign: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fixed_codes of the values lo .. lo + width - 1, as a table with sentinels.

    One kernel pass when no codeword there is longer than a code (the usual
    case: |q| below about 2**27); else through fixed_codes and its long codes.
    """
    codes, lens = np.empty(width + 2, dtype=np.uint64), np.empty(width + 2, dtype=np.uint8)
    if fill_window_codes(lo, k, sign, codes, lens):
        return codes, lens, np.zeros((0, 2), dtype=np.uint64)
    codes, lens, long_codes = fixed_codes(np.arange(lo, lo + width, dtype=np.int64), k, sign)
    return *with_sentinels(codes, lens), long_codes


@njit
def fill_window_codes(lo, k, sign, codes, lens):
    """window_codes in one pass: the codeword of the value lo + j - 1 at j = 1 .. size - 2,
    sentinels at both ends; False (and the tables unfinished) if one is over PAIR bits."""
    n = lens.size - 2
    codes[0] = codes[n + 1] = 0
    lens[0] = lens[n + 1] = OUT
    longest = 0
    for j in range(n):
        _, code, length = symbol_code(np.int64(lo + j), k, sign)
        codes[j + 1] = code
        lens[j + 1] = np.uint8(length)
        longest = max(longest, length)
    return longest <= PAIR


def with_sentinels(codes: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A table of codewords with an OUT sentinel at each end (see kernels)."""
    table_codes, table_lens = np.empty(codes.size + 2, dtype=np.uint64), np.empty(lens.size + 2, dtype=np.uint8)
    table_codes[1:-1], table_lens[1:-1] = codes, lens
    table_codes[[0, -1]], table_lens[[0, -1]] = 0, OUT
    return table_codes, table_lens


@njit
def pack_codes(v, signed, negative, k, k_run):
    """The codewords of symbols v as emit takes them: (codes, lengths, long codes).

    Codewords over 56 bits do not fit a code: they get length LONG and the
    index of their row in the long codes instead (low 64 bits, high bits << 8
    | length).  A zero in run mode, which has no codeword of its own, has
    none here either: tables give it ZERO.  In run mode (``k_run`` >= 0) each
    code starts with the code of a run of no zeros, 1 << k_run in k_run + 1
    bits, the usual case in dense data; the long codes do not, nor do the
    codes they would take over 56 bits.
    """
    n = v.size
    codes = np.empty(n, dtype=np.uint64)
    lens = np.empty(n, dtype=np.uint8)
    long_codes = np.empty((n, 2), dtype=np.uint64)
    extra = k_run + 1 if k_run >= 0 else 0
    nlong = 0
    for i in range(n):
        hi, code, length = eg_code(v[i], k, signed[i], negative[i])
        if length + extra > PAIR:
            long_codes[nlong, 0] = code
            long_codes[nlong, 1] = (hi << np.uint64(8)) | np.uint64(length)
            codes[i] = nlong
            lens[i] = LONG
            nlong += 1
        else:
            if k_run >= 0:
                code |= (U1 << np.uint64(k_run)) << np.uint64(length)
            codes[i] = code
            lens[i] = length + extra
    return codes, lens, long_codes[:nlong].copy()


@njit
def code_tables(keys, v, signed, negative, k, k_run, lo, lut_codes, lut_lens):
    """The codewords of the values ``keys`` (symbols v), as pack_codes makes them, split
    into the direct table ``lut_codes``/``lut_lens`` over the scan's window of values
    lo, lo + 1, ... (with sentinels, see kernels; left ZERO where no value is) and a
    sorted rest: (rest keys, rest codes, rest lens, long codes).  The writer then
    uses the scan's table indices as they are (see passes.KeyCache)."""
    codes, lens, long_codes = pack_codes(v, signed, negative, k, k_run)
    width = lut_lens.size - 2
    rest = np.zeros(keys.size, dtype=np.bool_)
    for i in range(keys.size):
        j = keys[i] - lo
        if 0 <= j < width:
            lut_codes[j + 1] = codes[i]
            lut_lens[j + 1] = lens[i]
        else:
            rest[i] = True
    return keys[rest], codes[rest], lens[rest], long_codes


def pattern_table(plan: Plan, key_of: np.ndarray, present: np.ndarray, coded: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The codeword of each bit pattern (ZERO for one absent, or without a code), from a
    plan of pattern values: pattern p has the value keys[key_of[p]], and the plan
    coded the values keys[coded], in that order, all outside its direct table (its
    window is empty), so its rest codes are theirs."""
    if plan.out_keys.size != coded.size:     # a bug, never the data
        raise AssertionError(f"eg: a plan of {plan.out_keys.size} pattern values for {coded.size}")
    codes = np.empty(key_of.size, dtype=np.uint64)
    lens = np.empty(key_of.size, dtype=np.uint8)
    fill_pattern_table(key_of, present, coded, plan.out_codes, plan.out_lens, codes, lens)
    return codes, lens


@njit
def fill_pattern_table(key_of, present, coded, key_codes, key_lens, codes, lens):
    at = np.full(key_of.size + 1, -1, dtype=np.int64)     # position among the coded values
    for i in range(coded.size):
        at[coded[i]] = i
    for p in range(key_of.size):
        i = at[key_of[p]] if present[p] else -1
        codes[p] = key_codes[i] if i >= 0 else 0
        lens[p] = key_lens[i] if i >= 0 else ZERO
