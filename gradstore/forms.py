"""The distinct forms (kind, dtype, shape) of a snapshot's rows.

A run's million keys have a few dozen forms: every layer's gradient has the
same few shapes.  An index row therefore holds a form number instead of its
dtype and dims, and a get turns the number into a numpy dtype and a shape
tuple that were built once, when the form was first asked for.
"""
from __future__ import annotations

import numpy as np

from . import dtypes

_U64 = np.dtype("<u8")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def gather_dims(ndim: np.ndarray, dstart: np.ndarray, dims: np.ndarray,
                which: np.ndarray) -> np.ndarray:
    """The shapes of the rows ``which`` (ndim and dstart index rows), concatenated."""
    nd = ndim[which].astype(np.int64)
    if not len(nd):
        return np.zeros(0, _U64)
    firsts = np.concatenate([[0], np.cumsum(nd)[:-1]])
    idx = np.repeat(dstart[which] - firsts, nd) + np.arange(int(nd.sum()))
    return np.ascontiguousarray(dims[idx], dtype=_U64)


class Forms:
    """Form number -> (kind, numpy dtype or None, shape, dtype name), over numpy columns."""

    def __init__(self, kind: np.ndarray, dtype: np.ndarray, ndim: np.ndarray, dims: np.ndarray):
        self.kind = kind            # u1 per form
        self.dtype = dtype          # u1 per form: the code of spec/FORMAT.md section 8
        self.ndim = ndim            # u1 per form
        self.dims = dims            # u64, the forms' shapes concatenated
        self.dstart = (np.cumsum(ndim, dtype=np.int64) - ndim).astype(np.int64)
        # Form number -> its tuple, or None until first asked for; the hot path
        # reads this list directly and calls build() on a None.
        self.built: list[tuple | None] = [None] * len(kind)

    def __len__(self) -> int:
        return len(self.kind)

    @classmethod
    def empty(cls) -> "Forms":
        none = np.zeros(0, np.uint8)
        return cls(none, none, none, np.zeros(0, _U64))

    def facts(self, f: int) -> tuple[int, tuple, str]:
        """(kind, shape, dtype name) of form ``f``, without its numpy dtype, which
        for bfloat16 would import ml_dtypes (half a second) just to check a snapshot."""
        start = int(self.dstart[f])
        return (int(self.kind[f]), tuple(self.dims[start:start + int(self.ndim[f])].tolist()),
                dtypes.NAMES[int(self.dtype[f])])

    def build(self, f: int) -> tuple:
        """Form ``f``'s tuple; its numpy dtype is None while that would mean importing
        ml_dtypes (see ``numpy_dtype``): listing and checking entries need only the name."""
        kind, shape, name = self.facts(f)
        got = self.built[f] = (kind, dtypes.loaded(name), shape, name)
        return got

    def numpy_dtype(self, f: int) -> np.dtype:
        """Form ``f``'s numpy dtype, resolved (and kept) now if build() left it None."""
        kind, dt, shape, name = self.built[f] or self.build(f)
        if dt is None:
            dt = dtypes.to_numpy(name)
            self.built[f] = (kind, dt, shape, name)
        return dt

    def row_dims(self, forms: np.ndarray) -> np.ndarray:
        """The shapes of rows with these form numbers, concatenated."""
        return gather_dims(self.ndim, self.dstart, self.dims, forms)

    @classmethod
    def of_rows(cls, kind: np.ndarray, dtype: np.ndarray, ndim: np.ndarray,
                dims: np.ndarray) -> tuple["Forms", np.ndarray]:
        """The forms of rows given as snapshot columns, and each row's form number (u32).

        Rows are grouped by a 64-bit hash of their form; every row is then
        compared with its group's first row, so a hash collision is caught
        and retried with another seed, never merged.
        """
        n = len(kind)
        dstart = (np.cumsum(ndim, dtype=np.int64) - ndim).astype(np.int64)
        if n == 0:
            return cls.empty(), np.zeros(0, np.uint32)
        deep = [np.flatnonzero(ndim > j) for j in range(int(ndim.max()))]  # rows with a dim j
        deep = [slice(None) if len(rows) == n else rows for rows in deep]
        base = (kind.astype(_U64) << np.uint64(16)) | (dtype.astype(_U64) << np.uint64(8)) | ndim
        for seed in range(1, 9):
            fh = _mix(base + np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64))
            for j, rows in enumerate(deep):
                fh[rows] = _mix(fh[rows] ^ dims[dstart[rows] + j])
            _, first, inv = np.unique(fh, return_index=True, return_inverse=True)
            rep = first[inv]
            same = (kind == kind[rep]) & (dtype == dtype[rep]) & (ndim == ndim[rep])
            for j, rows in enumerate(deep):
                same[rows] &= dims[dstart[rows] + j] == dims[dstart[rep[rows]] + j]
            if same.all():
                forms = cls(kind[first], dtype[first], ndim[first],
                            gather_dims(ndim, dstart, dims, first))
                return forms, inv.astype(np.uint32).reshape(-1)
        raise ValueError("snapshot shapes could not be told apart")  # 8 colliding seeds
