"""The dtypes a record may hold, by the names written to disk.

The on-disk name is the contract (spec/FORMAT.md, "dtype names"); numpy
dtypes are how Python sees them.  bfloat16 comes from ml_dtypes, so a bf16
record is a numpy view, never a conversion; ml_dtypes is imported only when
a bfloat16 dtype is first asked for.
"""
from __future__ import annotations

import sys

import numpy as np

# Order matters: the index encodes a dtype as its position in this tuple.
NAMES: tuple[str, ...] = (
    "float32", "float16", "bfloat16", "float64",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool",
)
BF16 = "bfloat16"

# bfloat16 joins these on first use (_load_bfloat16): importing ml_dtypes
# takes ~0.5 s, most of a command's start-up, and an fp32 store never needs it.
_BY_NAME: dict[str, np.dtype] = {name: np.dtype(name) for name in NAMES if name != BF16}
CODE: dict[str, int] = {name: i for i, name in enumerate(NAMES)}
ITEMSIZE: dict[str, int] = {**{name: dt.itemsize for name, dt in _BY_NAME.items()}, BF16: 2}
_NAME_BY_DTYPE: dict[np.dtype, str] = {dt: name for name, dt in _BY_NAME.items()}


def _load_bfloat16() -> np.dtype:
    import ml_dtypes
    dt = np.dtype(ml_dtypes.bfloat16)
    _BY_NAME[BF16] = dt
    _NAME_BY_DTYPE[dt] = BF16
    return dt


def to_numpy(name: str) -> np.dtype:
    """The little-endian numpy dtype of an on-disk dtype name."""
    dt = _BY_NAME.get(name)
    if dt is not None:
        return dt
    if name == BF16:
        return _load_bfloat16()
    raise ValueError(f"unknown dtype {name!r}; supported: {', '.join(NAMES)}")


def loaded(name: str) -> np.dtype | None:
    """The numpy dtype of an on-disk dtype name if it needs no import now (bfloat16
    before ml_dtypes is loaded: None)."""
    return _BY_NAME.get(name)


def by_code(code: int) -> np.dtype:
    """The numpy dtype of a dtype code (its position in NAMES)."""
    return to_numpy(NAMES[code])


def known_name(dtype) -> str | None:
    """The on-disk name of a numpy dtype, or None if gradstore cannot store it."""
    name = _NAME_BY_DTYPE.get(dtype)  # fast path: numpy's dtype.name is slow
    if name is not None:
        return name
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return None
    # an array can only be bfloat16 once ml_dtypes is imported (by the caller, if not by us)
    if "ml_dtypes" in sys.modules and dtype == to_numpy(BF16):
        return BF16
    if dtype.kind in "biuf" and dtype.name in _BY_NAME:
        return dtype.name
    return None


def name_of(dtype: np.dtype) -> str:
    """The on-disk name of a numpy dtype, or ValueError if gradstore cannot store it."""
    name = known_name(dtype)
    if name is None:
        raise ValueError(f"unsupported dtype {dtype}; supported: {', '.join(NAMES)}")
    return name
