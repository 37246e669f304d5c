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

from .bits import (KMAX, SIGN_BIT, SIGN_ZIGZAG, add_classes, codewords, counted_values, fill_table,
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


def classes_of(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    classes = np.zeros((65, 65), dtype=np.int64)
    add_classes(classes, values.astype(np.uint64), counts.astype(np.int64))
    return classes


def symbols(keys: np.ndarray, sign: int, runs: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(v, signed, negative) for each quantized value: what EG codes, and the sign bit."""
    if sign == SIGN_ZIGZAG:
        v = ((keys << 1) ^ (keys >> 63)).astype(np.uint64)
        signed = np.zeros(keys.size, dtype=np.bool_)
    else:
        v = np.abs(keys).astype(np.uint64)
        signed = np.ones(keys.size, dtype=np.bool_) if sign == SIGN_BIT or runs else keys != 0
    if runs:  # zeros are coded as runs, so values are never 0 and shift down by one
        v = v - np.uint64(1)
    return v, signed, keys < 0


def rank_table(v: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The symbols by descending frequency (ties: smaller first) and each v's rank.

    np.unique with inverse and np.lexsort take several times as long: v
    comes in at most a few ascending runs, which a stable argsort merges,
    and the order by frequency is one sort of (frequency, position) keys.
    """
    if v.size == 0:
        return v, v
    by_value = np.argsort(v, kind="stable")
    unique, freq, group = group_sorted(v[by_value], counts[by_value].astype(np.uint64))
    inverse = np.empty(v.size, dtype=np.intp)
    inverse[by_value] = group
    if freq.max() < 1 << 32 and unique.size < 1 << 32:
        keys = ((freq.max() - freq) << np.uint64(32)) | np.arange(unique.size, dtype=np.uint64)
        order = (np.sort(keys) & np.uint64(0xFFFFFFFF)).astype(np.intp)
    else:
        order = np.lexsort((unique, -freq.astype(np.float64)))
    rank = np.empty(unique.size, dtype=np.uint64)
    rank[order] = np.arange(unique.size, dtype=np.uint64)
    return unique[order], rank[inverse]


def fixed_plan(hist: Histogram, *, k: int, sign: int) -> Plan:
    """The plan of a fixed k without remap or runs, sizes only: the writer made its own codewords."""
    return make_plan(hist, k=k, sign=sign, remap=False, runs=False, codes=False)


def make_plan(hist: Histogram, *, k: int | str, sign: int, remap: bool, runs: bool,
              codes: bool = True) -> Plan:
    """Choose orders and codewords (unless not ``codes``) for a histogram; all sizes exact."""
    keys, counts = hist.keys, hist.counts
    coded = keys != 0 if runs else np.ones(keys.size, dtype=np.bool_)
    v, signed, negative = symbols(keys[coded], sign, runs)
    weights = counts[coded]

    table = np.zeros(0, dtype=np.uint64)
    deltas = np.zeros(0, dtype=np.int64)
    k_table = table_bits = 0
    if remap:
        table, v = rank_table(v, weights)
        deltas = np.diff(table.astype(np.int64), prepend=np.int64(0))
        if deltas.size:
            k_table, table_bits = best_order(classes_of(np.abs(deltas), np.ones_like(deltas)))
            table_bits += int(np.count_nonzero(deltas))

    sizes = sizes_by_order(classes_of(v, weights))
    if k == "auto":
        k = int(np.argmin(sizes)) if weights.size else 0
    value_bits = int(sizes[k]) + int(weights[signed].sum())

    k_run, run_bits = best_order(hist.run_classes) if runs else (0, 0)

    if codes:
        *packed, long_codes = _pack(v, signed, negative, k, k_run if runs else None)
        lut_lo, lut, out_keys, out = _lookup_tables(keys[coded], *packed, *hist.window)
    else:  # the writer makes its own codewords
        lut_lo, out_keys, long_codes = 0, keys[:0], np.zeros((0, 2), dtype=np.uint64)
        lut = out = (np.zeros(0, np.uint64), np.zeros(0, np.uint8))
    return Plan(k=k, k_run=k_run, k_table=k_table, table=table, table_deltas=deltas,
                table_bits=table_bits, value_bits=value_bits, run_bits=run_bits,
                lut_lo=lut_lo, lut_codes=lut[0], lut_lens=lut[1], out_keys=out_keys, out_codes=out[0],
                out_lens=out[1], long_codes=long_codes, entropy_bits=entropy_bits(counts),
                nsymbols=int(counts.sum()), scattered=runs and 2 * int(hist.run_classes[1:].sum()) > weights.sum())


def fixed_codes(values: np.ndarray, k: int, sign: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codewords (as _pack) of quantized ``values`` for a fixed k, no remap, no runs."""
    return _pack(*symbols(values, sign, False), k)


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


def _pack(v: np.ndarray, signed: np.ndarray, negative: np.ndarray, k: int,
          k_run: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The codewords of symbols v as emit takes them: (codes, lengths, long codes).

    Codewords over 56 bits do not fit a code: they get length LONG and the
    index of their row in the long codes instead.  A zero in run mode, which
    has no codeword of its own, has none here either: tables give it ZERO.
    In run mode (a ``k_run``) each code starts with the code of a run of no
    zeros, 1 << k_run in k_run + 1 bits, the usual case in dense data; the
    long codes do not, nor do the codes they would take over 56 bits.
    """
    codes = np.zeros((v.size, 2), dtype=np.uint64)
    codewords(v, signed, negative, k, codes)
    length = codes[:, 1] & np.uint64(255)
    lo = codes[:, 0].copy()
    if k_run is None:
        long = length > PAIR
    else:
        long = length + np.uint64(k_run + 1) > PAIR
        lo[~long] |= np.uint64(1 << k_run) << length[~long]
        length = length + np.uint64(k_run + 1)
    lo[long] = np.arange(np.count_nonzero(long), dtype=np.uint64)
    length[long] = LONG
    return lo, length.astype(np.uint8), np.ascontiguousarray(codes[long])


def codes_of(plan: Plan, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The codewords of quantized ``values`` (ZERO for a value without one)."""
    codes = np.zeros(values.size, dtype=np.uint64)
    lens = np.full(values.size, ZERO, dtype=np.uint8)
    inside = (values >= plan.lut_lo) & (values < plan.lut_lo + plan.lut_lens.size - 2)
    codes[inside] = plan.lut_codes[values[inside] - plan.lut_lo + 1]
    lens[inside] = plan.lut_lens[values[inside] - plan.lut_lo + 1]
    rest = values[~inside]
    at = np.minimum(np.searchsorted(plan.out_keys, rest), max(plan.out_keys.size - 1, 0))
    found = plan.out_keys[at] == rest if plan.out_keys.size else np.zeros(rest.size, np.bool_)
    codes[np.flatnonzero(~inside)[found]] = plan.out_codes[at[found]]
    lens[np.flatnonzero(~inside)[found]] = plan.out_lens[at[found]]
    return codes, lens


def _lookup_tables(keys: np.ndarray, codes: np.ndarray, lens: np.ndarray, lo: int, width: int) -> tuple:
    """Split codewords into a direct table over the scan's window of values lo .. lo +
    width - 1 (with sentinels, see kernels; ZERO where no value is) and a sorted
    rest: (lo, (codes, lens), rest keys, (codes, lens)).  The writer then uses the
    scan's table indices as they are (see passes.KeyCache)."""
    lut_codes, lut_lens = np.zeros(width + 2, dtype=np.uint64), np.full(width + 2, ZERO, dtype=np.uint8)
    lut_lens[[0, -1]] = OUT
    rest = fill_table(keys, codes, lens, lo, lut_codes, lut_lens)
    return lo, (lut_codes, lut_lens), keys[rest], (codes[rest], lens[rest])
