"""The eg encoder's two passes over an array: how its elements reach the kernels.

An array is fed one of two ways (see kernels):

* 1- and 2-byte dtypes (float16, bfloat16, small integers, bool) by bit
  pattern: each of the at most 65536 patterns is quantized once, here (the
  tables over all patterns made once per dtype, scale and code);
* everything else by value, chunk by chunk, quantized in the kernels; small
  float16/bfloat16 arrays too, widened to float32 (exactly: the same q).

Pass 1 (scan) validates and counts; pass 2 (write) writes the codewords
the plan chose, which for k=auto or remap=rank need the whole histogram
first.  The scan keeps each element's table index (KeyCache) and, for
scattered non-zeros in run mode, where they are (NonZeros), so that the
writer need not quantize again nor look at the zeros.  A fixed k without
remap or runs needs no histogram, so scan_and_write() does both in one
pass, each element quantized once.  Besides the output, memory stays
bounded whatever the array: CHUNK elements and WINDOW counters, 2 bytes for
each of the first CACHE elements, and 8 for one in four of them.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from ... import dtypes
from ...errors import CodecError, NotEncodableError
from . import kernels as K
from . import write as W
from .bits import add_classes, code_bits
from .plan import Histogram, Plan, fixed_codes, group_for, merge_counts, pattern_table, window_codes

CHUNK = 1 << 20           # elements per kernel call: bounds every buffer (outliers: 16 MB)
WINDOW = 1 << 20          # widest value range counted by direct indexing
SAMPLE = 4096             # elements looked at to place that range ...
RUN = 16                  # ... in runs of this many: one cache line of float32, not one each
CACHE = 1 << 23           # elements whose table indices the scan keeps for the writer (16 MB)
PATTERNS_FROM = 1 << 14   # smaller 2-byte float arrays go by value, as float32: tables of all
                          # 65536 patterns cost more than their elements


def is_float(dtype: np.dtype) -> bool:
    """True for the float dtypes (quantized), False for integers and bool (coded as they are)."""
    try:
        return dtypes.name_of(dtype) in ("float32", "float64", "float16", "bfloat16")
    except ValueError as exc:
        raise CodecError(f"eg: {exc}") from None


class Source:
    """An array as the kernels take it, with its scale (1.0 for integers)."""

    def __init__(self, array: np.ndarray, scale: float):
        self.array = array
        self.flat = array.reshape(-1)
        self.is_float = is_float(array.dtype)
        self.scale = scale if self.is_float else 1.0
        self.by_pattern = array.dtype.itemsize <= 2
        if self.by_pattern and self.is_float and self.flat.size < PATTERNS_FROM:
            self.flat, self.by_pattern = self.flat.astype(np.float32), False   # exact: same q
        if self.by_pattern:
            self.values, self.valid = pattern_values(array.dtype, self.scale)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(offset, chunk) of at most CHUNK elements: bit patterns, floats or integers."""
        flat = self.flat
        if self.by_pattern:
            flat = flat.view(np.uint16 if flat.dtype.itemsize == 2 else np.uint8)
        for start in range(0, flat.size, CHUNK):
            chunk = flat[start:start + CHUNK]
            if chunk.dtype == np.uint64:
                big = np.flatnonzero(chunk >= K.LIMIT)
                if big.size:
                    raise NotEncodableError(f"eg cannot code element {start + int(big[0])} = "
                                            f"{int(chunk[big[0]])} of a uint64 array: beyond the eg "
                                            f"range |q| < 2**62")
                chunk = chunk.view(np.int64)
            yield start, chunk

    def scan(self, runs: bool) -> Histogram:
        """Pass 1: validate and count the quantized values and the zero runs."""
        return self._count(runs, None)

    def scan_and_write(self, k: int, sign: int, out: Output) -> Histogram:
        """Both passes at once, for a fixed k without remap or runs: the codewords need no
        histogram then, so each element is quantized once."""
        return self._count(False, (k, sign, out))

    def _count(self, runs: bool, fixed: tuple | None) -> Histogram:
        run_classes = np.zeros((65, 65), dtype=np.int64)
        state = np.array([0, -1], dtype=np.int64)
        count = self._count_patterns if self.by_pattern else self._count_values
        hist = count(run_classes if runs else None, fixed, state)
        hist.run_classes = run_classes
        if runs:  # the final run, then the runs of no zeros (one before each non-zero value)
            if state[0]:
                add_classes(run_classes, state[:1].astype(np.uint64), np.ones(1, np.int64))
            nonzero = int(hist.counts[hist.keys != 0].sum())
            run_classes[0, 0] += nonzero + 1 - int(run_classes.sum())
        return hist

    def _count_patterns(self, run_classes: np.ndarray | None, fixed: tuple | None,
                        state: np.ndarray) -> Histogram:
        counts = np.zeros((K.COPIES, self.values.size), dtype=self._count_type)
        if fixed:
            k, sign, out = fixed
            group = self._group(k, sign)
            codes, lens, long_codes = pattern_codes(self.array.dtype, self.scale, k, sign)
        keys, inverse, is_zero = pattern_keys(self.array.dtype, self.scale)
        for _, chunk in self.chunks():
            if not fixed:
                K.scan_patterns(chunk, counts, is_zero, run_classes, state)
                continue
            done = 0
            while done < chunk.size:
                done = W.encode_patterns(chunk, done, counts, codes, lens, long_codes, group, out.body,
                                         out.state)
                out.grow(done < chunk.size)
        self.present = np.empty(self.values.size, dtype=np.bool_)
        summed = np.zeros(keys.size, dtype=np.int64)
        if K.merge_patterns(counts, inverse, self.valid, self.present, summed):
            bad = np.flatnonzero(self.present & ~self.valid)
            raise NotEncodableError(self.why(int(np.flatnonzero(np.isin(self._bits(), bad))[0])))
        found = np.flatnonzero(summed)
        # the values the plan will code, as indices into keys: its codes come in their order
        self.coded = found if run_classes is None else found[keys[found] != 0]
        self.key_of = inverse
        return Histogram(keys[found], summed[found])

    def _count_values(self, run_classes: np.ndarray | None, fixed: tuple | None,
                      state: np.ndarray) -> Histogram:
        wlo, width = self.window()
        counts = np.zeros((K.COPIES, width + 2), dtype=self._count_type)      # with sentinels, see kernels
        if fixed:
            k, sign, out = fixed
            group = self._group(k, sign)
            codes, lens, long_codes = window_codes(wlo, width, k, sign)
        outliers = Outliers(self.flat.size)
        if not fixed:
            self.cache = KeyCache(self.flat.size, width + 2)
            self.nonzeros = NonZeros(self.flat.size, run_classes is not None and self.scattered)
            # zeros run by run (count_sparse) pay a mispredicted branch per run: worth it for long
            # runs, or to count runs at all; short ones without runs go faster branch-free
            sparse = self.mostly_zeros and (run_classes is not None or not self.scattered)
        for offset, chunk in self.chunks():
            outliers.make_room(chunk.size)
            done = 0
            while done < chunk.size:
                if fixed:
                    done, outliers.filled, bad = W.encode_values(
                        chunk, done, self.is_float, self.scale, k, sign, wlo, counts, codes, lens, long_codes,
                        outliers.buf, outliers.filled, group, self.long_zero_runs, out.body, out.state)
                    out.grow(done < chunk.size and bad < 0)
                else:
                    outliers.filled = K.scan_values(chunk, offset, self.is_float, self.scale, wlo, counts,
                                                    outliers.buf, outliers.filled, run_classes, sparse,
                                                    self.nonzeros.buf, self.cache.of(offset, chunk.size), state)
                    done, bad = chunk.size, int(state[1])
                if bad >= 0:
                    raise NotEncodableError(self.why(offset + int(bad)))
        outliers.merge()
        return Histogram.from_scan(counts[:, 1:-1], wlo, outliers.keys, outliers.counts)

    @property
    def _count_type(self) -> type:
        return np.uint32 if self.flat.size < 1 << 32 else np.int64

    def _group(self, k: int, sign: int) -> int:
        return group_for(self.average_bits(k, sign))

    def write(self, plan: Plan, runs: bool, out: Output) -> None:
        """Pass 2: append the body to ``out``, as ``plan`` says."""
        body, state = out.body, out.state
        if plan.table.size:
            W.write_eg_values(plan.table_deltas, plan.k_table, True, body, state)
        k_run = plan.k_run if runs else None
        if self.by_pattern:
            codes, lens = pattern_table(plan, self.key_of, self.present, self.coded)
            for _, chunk in self.chunks():
                W.write_patterns(chunk, codes, lens, plan.long_codes, k_run, 0, plan.group, body, state)
        else:
            tables = (plan.lut_codes, plan.lut_lens, plan.out_keys, plan.out_codes, plan.out_lens, plan.long_codes)
            listed = self.nonzeros.listed() if runs and plan.scattered else None
            for offset, chunk in self.chunks():
                W.write_values(chunk, offset, self.cache.of(offset, chunk.size), listed, self.is_float, self.scale,
                               plan.lut_lo, tables, k_run, plan.group, self.long_zero_runs, body, state)
        if runs:  # the trailing zeros
            W.write_eg_values(state[3:4].astype(np.int64), plan.k_run, False, body, state)

    def window(self) -> tuple[int, int]:
        """(wlo, width): the scan counts values in [wlo, wlo + width) by direct indexing.

        The window covers the range of a sample of the values, with room to
        spare, when that is not too wide for the array; values outside go
        the slower outlier path.  For floats it stays inside (-2**51, 2**51),
        where kernels.table_keys is exact.
        """
        cap = min(WINDOW, max(4096, 2 * self.flat.size))
        limit = K.FAST if self.is_float else K.LIMIT
        q = self._sample[np.abs(self._sample) < limit]
        if q.size == 0:
            return 0, 4096
        lo, hi = int(q.min()), int(q.max())
        span = hi - lo + 1
        width = min(cap, max(4096, 2 * span))
        wlo = lo - (width - span) // 2 if width >= span else int(np.partition(q, q.size // 2)[q.size // 2]) - width // 2
        return min(max(wlo, 1 - limit), limit - width), width

    def estimate_bits(self, k: int, sign: int) -> int:
        """About how many bits a fixed-k code of the whole array takes, from a sample."""
        return int(1.25 * self.average_bits(k, sign) * self.flat.size) + 64 * 1024

    def average_bits(self, k: int, sign: int) -> float:
        """The mean fixed-k codeword length over a sample of the array."""
        q = self._sample
        return code_bits(q.astype(np.int64), k, sign) / q.size if q.size else 0.0

    @property
    def mostly_zeros(self) -> bool:
        """Whether more than half of a sample of the array quantizes to 0."""
        return 2 * int(np.count_nonzero(self._sample == 0)) > self._sample.size

    @property
    def scattered(self) -> bool:
        """Whether, in a sample, the array is mostly zeros and most of its non-zeros come
        after a zero (see NonZeros)."""
        zero = np.abs(self._runs) <= 0.5              # rint(y) == 0; not NaN
        after_zero = np.count_nonzero(zero[:, :-1] & ~zero[:, 1:])
        return self.mostly_zeros and 2 * after_zero > np.count_nonzero(~zero[:, 1:])

    @property
    def long_zero_runs(self) -> bool:
        """Whether, in a sample, the array is mostly zeros in long runs."""
        return self.mostly_zeros and not self.scattered

    @functools.cached_property
    def _sample(self) -> np.ndarray:
        """About SAMPLE quantized values, evenly spread in runs of RUN elements; those that
        cannot be coded (NaN, Inf, |q| >= 2**62) left out."""
        y = self._runs.reshape(-1)
        return np.rint(y[np.abs(y) < K.LIMIT])

    @functools.cached_property
    def _runs(self) -> np.ndarray:
        """The runs of the sample, scaled: (runs, RUN) float64, or the whole array as one."""
        picked, n = self.flat, self.flat.size
        if n > SAMPLE:
            step = (n - RUN) // (SAMPLE // RUN - 1) * picked.itemsize
            picked = np.lib.stride_tricks.as_strided(picked, (SAMPLE // RUN, RUN), (step, picked.itemsize))
        with np.errstate(invalid="ignore", over="ignore"):
            return picked.astype(np.float64).reshape(-1 if n > SAMPLE else 1, RUN if n > SAMPLE else n) * self.scale

    def _bits(self) -> np.ndarray:
        return self.flat.view(np.uint16 if self.flat.dtype.itemsize == 2 else np.uint8)

    def why(self, index: int) -> str:
        """Why element ``index`` (flat) cannot be coded, naming it."""
        array, scale = self.array, self.scale
        position = tuple(int(i) for i in np.unravel_index(index, array.shape)) if array.ndim else ()
        value = self.flat[index]
        text = repr(float(value)) if self.is_float else str(int(value))
        where = f"eg cannot code element {position} = {text} of a {dtypes.name_of(array.dtype)} array"
        if self.is_float:
            if np.isnan(value):
                return f"{where}: NaN"
            if np.isinf(value):
                return f"{where}: infinite"
            return f"{where}: round(x * scale={scale!r}) is beyond the eg range |q| < 2**62"
        return f"{where}: beyond the eg range |q| < 2**62"


class KeyCache:
    """The scan's table indices of the first CACHE elements, 2 bytes each, when the table
    has at most 65536 entries: the writer takes them instead of quantizing again."""

    def __init__(self, n: int, size: int):
        self.keys = np.empty(min(n, CACHE) if size <= 1 << 16 else 0, dtype=np.uint16)

    def of(self, offset: int, size: int) -> np.ndarray | None:
        """The cache of elements offset .. offset + size - 1, None if it does not hold them all."""
        return self.keys[offset:offset + size] if offset + size <= self.keys.size else None


class NonZeros:
    """The indices of the non-zeros, listed by the scan of an array of mostly zeros (in
    run mode), so that the writer skips the zeros without looking at them: worth it
    when the non-zeros are scattered, one or two between runs of zeros; in long
    stretches, the writer is faster going through them four at a time.  Room for
    an element in four of the first CACHE; if there are more, the list is not used.
    ``buf[0]`` is how many the scan found, buf[1:] the list."""

    def __init__(self, n: int, wanted: bool):
        self.buf = np.empty(min(n, CACHE) // 4 + 1, dtype=np.int64) if wanted else None
        if wanted:
            self.buf[0] = 0

    def listed(self) -> np.ndarray | None:
        if self.buf is None or self.buf[0] > self.buf.size - 1:
            return None
        return self.buf[1:1 + self.buf[0]]


class Outliers:
    """The values that fell outside the scan's window, counted: the kernels append them
    to ``buf``, merged into ``keys``, ``counts`` when it might overflow and at the end,
    so memory stays within 2 * CHUNK values."""

    def __init__(self, n: int):
        self.buf = np.empty(min(2 * CHUNK, n), dtype=np.int64)   # pages are touched only as used
        self.filled = 0
        self.keys = self.counts = np.zeros(0, dtype=np.int64)

    def make_room(self, more: int) -> None:
        if self.filled + more > self.buf.size:
            self.merge()

    def merge(self) -> None:
        if self.filled:
            keys, found = np.unique(self.buf[:self.filled], return_counts=True)
            self.keys, self.counts = merge_counts(self.keys, self.counts, keys, found) if self.keys.size \
                else (keys, found)
            self.filled = 0


class Output:
    """The body being written, as bytes after room for a header.

    ``body`` has room for ``nbits`` bits and 16 spare bytes; when the size
    is not known in advance, grow() makes room as the writer goes.
    """

    def __init__(self, header_bytes: int, nbits: int):
        self.header_bytes = header_bytes
        self.buf = np.empty(header_bytes + nbits // 8 + 16, dtype=np.uint8)
        self.body = self.buf[header_bytes:]
        self.state = np.zeros(5, dtype=np.uint64)     # as in emit

    def grow(self, needed: bool = True) -> None:
        if needed:
            used = self.header_bytes + int(self.state[0])
            buf = np.empty(max(2 * self.buf.size, used + 32 * W.BLOCK), dtype=np.uint8)
            buf[:used] = self.buf[:used]
            self.buf, self.body = buf, buf[self.header_bytes:]

    def finish(self) -> tuple[np.ndarray, int]:
        """(buffer, body bits): the pending bits written out."""
        W.flush(self.body, self.state)
        return self.buf, int(self.state[0]) * 8 + int(self.state[2])


@functools.lru_cache(maxsize=16)
def pattern_values(dtype: np.dtype, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(q, ok) for every bit pattern of a 1- or 2-byte dtype: its quantized value, and
    whether it can be coded at all (not NaN, Inf or beyond 2**62)."""
    bits = np.arange(1 << (8 * dtype.itemsize), dtype=np.uint16 if dtype.itemsize == 2 else np.uint8)
    if dtype == np.bool_:
        q, ok = bits.astype(np.int64), bits <= 1
    elif not is_float(dtype):
        q, ok = bits.view(dtype).astype(np.int64), np.ones(bits.size, dtype=np.bool_)
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            y = bits.view(dtype).astype(np.float64) * scale
        ok = np.abs(y) < K.FLIMIT
        q = np.rint(np.where(ok, y, 0.0)).astype(np.int64)
    q.flags.writeable = ok.flags.writeable = False  # shared by every call with this dtype and scale
    return q, ok


@functools.lru_cache(maxsize=16)
def pattern_codes(dtype: np.dtype, scale: float, k: int, sign: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fixed_codes of every bit pattern's quantized value (length 0 for those that cannot be
    coded), made once for each dtype, scale, k and sign."""
    values, valid = pattern_values(dtype, scale)
    codes, lens = np.zeros(values.size, np.uint64), np.zeros(values.size, np.uint8)
    codes[valid], lens[valid], long_codes = fixed_codes(values[valid], k, sign)
    for table in (codes, lens, long_codes):
        table.flags.writeable = False
    return codes, lens, long_codes


@functools.lru_cache(maxsize=16)
def pattern_keys(dtype: np.dtype, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct quantized values of the bit patterns, ascending; each pattern's index among
    them; whether it is a zero that can be coded), made once for each dtype and scale."""
    values, valid = pattern_values(dtype, scale)
    keys, inverse = np.unique(values, return_inverse=True)
    is_zero = (values == 0) & valid
    for table in (keys, inverse, is_zero):
        table.flags.writeable = False
    return keys, inverse, is_zero
