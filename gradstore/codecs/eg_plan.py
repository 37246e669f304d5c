"""Everything the eg encoder decides once per tensor, from its histogram.

The scan pass (eg_passes.Source.scan) leaves a histogram of the quantized values
and of the zero runs.  From it alone this module derives, exactly and
without trial encodings: the symbol each value is coded as (sign mode,
rank remap), the order k that minimises the size, the rank table, the total
number of bits, and the codeword of every distinct value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .eg_bits import KMAX, SIGN_BIT, SIGN_ZIGZAG, add_classes, codewords, sizes_by_order
from .eg_write import LONG, PAIR
from .stats import entropy_bits


@dataclass
class Histogram:
    """What the scan pass counted: distinct quantized values and zero runs."""

    keys: np.ndarray          # distinct quantized values, int64, ascending
    counts: np.ndarray        # how often each occurs, int64
    run_classes: np.ndarray   # (65, 65) classes of the zero runs, final run included

    @classmethod
    def from_scan(cls, window: np.ndarray, wlo: int, out_keys: np.ndarray,
                  out_counts: np.ndarray, run_classes: np.ndarray) -> Histogram:
        """From the scan's (copies, width) counters and its sorted outliers."""
        window = window.sum(axis=0, dtype=np.int64)
        present = np.flatnonzero(window)
        keys = np.concatenate([present.astype(np.int64) + wlo, out_keys])
        counts = np.concatenate([window[present], out_counts])
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], counts[order], run_classes)

    @classmethod
    def from_patterns(cls, counts: np.ndarray, values: np.ndarray, run_classes: np.ndarray) -> Histogram:
        """From the scan's (copies, patterns) counters and each pattern's quantized value."""
        counts = counts.sum(axis=0, dtype=np.int64)
        present = np.flatnonzero(counts)
        keys, inverse = np.unique(values[present], return_inverse=True)
        summed = np.zeros(keys.size, dtype=np.int64)
        np.add.at(summed, inverse, counts[present])
        return cls(keys, summed, run_classes)


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
    lut_lo: int               # value of lut[0]
    lut: np.ndarray           # packed codewords of values lut_lo, lut_lo + 1, ... (see eg_write)
    out_keys: np.ndarray      # values outside the lut span, ascending
    out_lut: np.ndarray       # their packed codewords
    long_codes: np.ndarray    # (n, 2) codewords longer than 56 bits
    entropy_bits: float

    @property
    def nbits(self) -> int:
        return self.table_bits + self.value_bits + self.run_bits


LUT_SPAN = 1 << 20  # widest run of values given a direct-lookup table


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
    """The symbols by descending frequency (ties: smaller first) and each v's rank."""
    unique, inverse = np.unique(v, return_inverse=True)
    freq = np.zeros(unique.size, dtype=np.int64)
    np.add.at(freq, inverse, counts)
    order = np.lexsort((unique, -freq))
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
        packed, long_codes = _pack(v, signed, negative, k, k_run if runs else None)
        lut_lo, lut, out_keys, out_lut = _lookup_tables(keys[coded], packed)
    else:  # the writer makes its own codewords
        lut_lo, lut, out_keys, out_lut = 0, np.zeros(0, np.uint64), keys[:0], np.zeros(0, np.uint64)
        long_codes = np.zeros((0, 2), dtype=np.uint64)
    return Plan(k=k, k_run=k_run, k_table=k_table, table=table, table_deltas=deltas,
                table_bits=table_bits, value_bits=value_bits, run_bits=run_bits,
                lut_lo=lut_lo, lut=lut, out_keys=out_keys, out_lut=out_lut,
                long_codes=long_codes, entropy_bits=entropy_bits(counts))


def fixed_codes(values: np.ndarray, k: int, sign: int) -> tuple[np.ndarray, np.ndarray]:
    """Packed codewords (as _pack) of quantized ``values`` for a fixed k, no remap, no runs."""
    return _pack(*symbols(values, sign, False), k)


def _pack(v: np.ndarray, signed: np.ndarray, negative: np.ndarray, k: int,
          k_run: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The codewords of symbols v, one uint64 each, code << 8 | length, so a lookup is one load.

    Codewords over 56 bits do not fit: they get length LONG and the index
    of their row in the second array instead.  Length 0 is left to mean a
    zero in run mode, which has no codeword of its own.  In run mode (a
    ``k_run``) each packed code starts with the code of a run of no zeros,
    1 << k_run in k_run + 1 bits, the usual case in dense data; the rows of
    the second array do not, nor do the codes it would take over 56 bits.
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
    packed = (lo << np.uint64(8)) | length
    packed[long] = (np.arange(np.count_nonzero(long), dtype=np.uint64) << np.uint64(8)) | np.uint64(LONG)
    return packed, np.ascontiguousarray(codes[long])


def codes_of(plan: Plan, values: np.ndarray) -> np.ndarray:
    """The packed codewords of quantized ``values`` (0 for a value without one)."""
    codes = np.zeros(values.size, dtype=np.uint64)
    inside = (values >= plan.lut_lo) & (values < plan.lut_lo + plan.lut.size)
    codes[inside] = plan.lut[values[inside] - plan.lut_lo]
    rest = values[~inside]
    at = np.minimum(np.searchsorted(plan.out_keys, rest), max(plan.out_keys.size - 1, 0))
    found = plan.out_keys[at] == rest if plan.out_keys.size else np.zeros(rest.size, np.bool_)
    codes[np.flatnonzero(~inside)[found]] = plan.out_lut[at[found]]
    return codes


def _lookup_tables(keys: np.ndarray, packed: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Split codewords into a direct table over the dense middle and a sorted rest.

    The direct table spans at most LUT_SPAN values around zero, so a heavy
    tail does not blow it up.
    """
    if keys.size == 0:
        return 0, np.zeros(0, np.uint64), keys, packed
    centre = int(np.clip(0, keys[0], keys[-1]))
    lo = max(int(keys[0]), centre - LUT_SPAN // 2)
    hi = min(int(keys[-1]), lo + LUT_SPAN - 1)
    inside = (keys >= lo) & (keys <= hi)
    lut = np.zeros(hi - lo + 1, dtype=np.uint64)
    lut[keys[inside] - lo] = packed[inside]
    return lo, lut, np.ascontiguousarray(keys[~inside]), np.ascontiguousarray(packed[~inside])
