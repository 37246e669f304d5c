"""The eg encoder's two passes over an array: how its elements reach the kernels.

An array is fed one of two ways (see eg_kernels):

* 1- and 2-byte dtypes (float16, bfloat16, small integers, bool) by bit
  pattern: each of the at most 65536 patterns is quantized once, here;
* everything else by value, chunk by chunk, quantized in the kernels.

Pass 1 (scan) validates and counts; pass 2 (write) quantizes again and
writes the codewords the plan chose, which for k=auto or remap=rank need
the whole histogram first.  A fixed k without remap or runs needs none, so
scan_and_write() does both in one pass, each element quantized once.
Besides the output, memory stays bounded by CHUNK elements and WINDOW
counters whatever the array.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from .. import dtypes
from ..errors import CodecError, NotEncodableError
from . import eg_kernels as K
from . import eg_write as W
from .eg_bits import SIGN_ZIGZAG, add_classes
from .eg_plan import Histogram, Plan, codes_of, fixed_codes, merge_counts

CHUNK = 1 << 20           # elements per kernel call: bounds every buffer (outliers: 8 MB)
WINDOW = 1 << 20          # widest value range counted by direct indexing
SAMPLE = 4096             # elements looked at to place that range


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
        ctype = np.uint32 if self.flat.size < 1 << 32 else np.int64
        if self.by_pattern:
            counts = np.zeros((K.COPIES, self.values.size), dtype=ctype)
            is_zero = (self.values == 0) & self.valid
            if fixed:
                k, sign, out = fixed
                by_pattern = np.zeros(self.values.size, dtype=np.uint64)
                by_pattern[self.valid], long_codes = fixed_codes(self.values[self.valid], k, sign)
            for _, chunk in self.chunks():
                if not fixed:
                    K.scan_patterns(chunk, counts, is_zero, run_classes if runs else None, state)
                    continue
                done = 0
                while done < chunk.size:
                    done = W.encode_patterns(chunk, done, counts, by_pattern, long_codes, out.body, out.state)
                    out.grow(done < chunk.size)
            self.present = counts.any(axis=0)
            bad = np.flatnonzero(self.present & ~self.valid)
            if bad.size:
                raise NotEncodableError(self.why(int(np.flatnonzero(np.isin(self._bits(), bad))[0])))
            hist = Histogram.from_patterns(counts, self.values, run_classes)
        else:
            wlo, width = self.window()
            counts = np.zeros((K.COPIES, width), dtype=ctype)
            if fixed:
                window_codes, long_codes = fixed_codes(np.arange(wlo, wlo + width, dtype=np.int64), *fixed[:2])
            outliers = np.empty(min(CHUNK, self.flat.size), dtype=np.int64)
            out_keys = out_counts = np.zeros(0, dtype=np.int64)
            for offset, chunk in self.chunks():
                done = 0
                while done < chunk.size:
                    if fixed:
                        k, sign, out = fixed
                        done, nout, bad = W.encode_values(chunk, done, self.is_float, self.scale, k, sign, wlo,
                                                          counts, window_codes, long_codes, outliers, out.body,
                                                          out.state)
                        out.grow(done < chunk.size and bad < 0)
                    else:
                        nout = K.scan_values(chunk, self.is_float, self.scale, wlo, counts, outliers,
                                             run_classes if runs else None, state)
                        done, bad = chunk.size, int(state[1])
                    if bad >= 0:
                        raise NotEncodableError(self.why(offset + int(bad)))
                    if nout:
                        keys, found = np.unique(outliers[:nout], return_counts=True)
                        out_keys, out_counts = merge_counts(out_keys, out_counts, keys, found)
            hist = Histogram.from_scan(counts, wlo, out_keys, out_counts, run_classes)
        if runs:  # the final run, then the runs of no zeros (one before each non-zero value)
            if state[0]:
                add_classes(run_classes, state[:1].astype(np.uint64), np.ones(1, np.int64))
            nonzero = int(hist.counts[hist.keys != 0].sum())
            run_classes[0, 0] += nonzero + 1 - int(run_classes.sum())
        return hist

    def write(self, plan: Plan, runs: bool, out: Output) -> None:
        """Pass 2: append the body to ``out``, as ``plan`` says."""
        body, state = out.body, out.state
        if plan.table.size:
            W.write_eg_values(plan.table_deltas, plan.k_table, True, body, state)
        k_run = plan.k_run if runs else None
        if self.by_pattern:
            by_pattern = np.zeros(self.values.size, dtype=np.uint64)
            by_pattern[self.present] = codes_of(plan, self.values[self.present])
            for _, chunk in self.chunks():
                W.write_patterns(chunk, by_pattern, plan.long_codes, k_run, body, state)
        else:
            for _, chunk in self.chunks():
                W.write_values(chunk, self.is_float, self.scale, plan.lut_lo, plan.lut, plan.out_keys,
                               plan.out_lut, plan.long_codes, k_run, body, state)
        if runs:  # the trailing zeros
            W.write_eg_values(state[3:4].astype(np.int64), plan.k_run, False, body, state)

    def window(self) -> tuple[int, int]:
        """(wlo, width): the scan counts values in [wlo, wlo + width) by direct indexing.

        The window covers the range of a sample of the values, with room to
        spare, when that is not too wide for the array; values outside go
        the slower outlier path.  For floats it stays inside (-2**51, 2**51),
        where eg_kernels.value_keys is exact.
        """
        cap = min(WINDOW, max(4096, 2 * self.flat.size))
        limit = K.FAST if self.is_float else K.LIMIT
        q = np.sort(self._sample(limit))
        if q.size == 0:
            return 0, 4096
        lo, hi = int(q[0]), int(q[-1])
        span = hi - lo + 1
        width = min(cap, max(4096, 2 * span))
        wlo = lo - (width - span) // 2 if width >= span else int(q[q.size // 2]) - width // 2
        return min(max(wlo, 1 - limit), limit - width), width

    def estimate_bits(self, k: int, sign: int) -> int:
        """About how many bits a fixed-k code of the whole array takes, from a sample."""
        q = np.abs(self._sample(K.LIMIT))
        if q.size == 0:
            return 64 * 1024
        m = (2 * q if sign == SIGN_ZIGZAG else q) + 2.0 ** k
        bits = 2 * (np.floor(np.log2(m)) + 1) - 1 - k + (sign != SIGN_ZIGZAG)
        return int(1.25 * float(bits.mean()) * self.flat.size) + 64 * 1024

    def _sample(self, limit: int) -> np.ndarray:
        """About SAMPLE quantized values, evenly spread; those of magnitude ``limit`` or more left out."""
        with np.errstate(invalid="ignore", over="ignore"):
            y = self.flat[::max(1, self.flat.size // SAMPLE)].astype(np.float64) * self.scale
        return np.rint(y[np.abs(y) < limit])

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


class Output:
    """The body being written, as bytes after room for a header.

    ``body`` has room for ``nbits`` bits and 16 spare bytes; when the size
    is not known in advance, grow() makes room as the writer goes.
    """

    def __init__(self, header_bytes: int, nbits: int):
        self.header_bytes = header_bytes
        self.buf = np.empty(header_bytes + nbits // 8 + 16, dtype=np.uint8)
        self.body = self.buf[header_bytes:]
        self.state = np.zeros(4, dtype=np.uint64)     # as in eg_write

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
