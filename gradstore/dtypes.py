"""The dtypes a record may hold, by the names written to disk.

The on-disk name is the contract (spec/FORMAT.md, "dtype names"); numpy
dtypes are how Python sees them.  bfloat16 comes from ml_dtypes, so a bf16
record is a numpy view, never a conversion.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

# Order matters: the index encodes a dtype as its position in this tuple.
NAMES: tuple[str, ...] = (
    "float32", "float16", "bfloat16", "float64",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool",
)

_BY_NAME: dict[str, np.dtype] = {
    name: np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    for name in NAMES
}
CODE: dict[str, int] = {name: i for i, name in enumerate(NAMES)}
NUMPY: tuple[np.dtype, ...] = tuple(_BY_NAME[name] for name in NAMES)  # by code
ITEMSIZE: dict[str, int] = {name: dt.itemsize for name, dt in _BY_NAME.items()}
_NAME_BY_DTYPE: dict[np.dtype, str] = {dt: name for name, dt in _BY_NAME.items()}


def to_numpy(name: str) -> np.dtype:
    """The little-endian numpy dtype of an on-disk dtype name."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; supported: {', '.join(NAMES)}") from None


def name_of(dtype: np.dtype) -> str:
    """The on-disk name of a numpy dtype, or ValueError if gradstore cannot store it."""
    name = _NAME_BY_DTYPE.get(dtype)  # fast path: numpy's dtype.name is slow
    if name is not None:
        return name
    dtype = np.dtype(dtype)
    if dtype == _BY_NAME["bfloat16"]:
        return "bfloat16"
    if dtype.kind in "biuf" and dtype.name in _BY_NAME:
        return dtype.name
    raise ValueError(f"unsupported dtype {dtype}; supported: {', '.join(NAMES)}")
