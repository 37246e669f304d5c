"""Turn what users hand us (numpy arrays, torch tensors) into storable arrays."""
from __future__ import annotations

import numpy as np

from . import dtypes


def is_torch_tensor(obj: object) -> bool:
    """True for a torch.Tensor, without importing torch."""
    cls = type(obj)
    return cls.__module__.startswith("torch") and hasattr(obj, "detach") and hasattr(obj, "dtype")


def as_array(obj: object, *, what: str = "value") -> np.ndarray:
    """A C-contiguous, little-endian numpy array of a supported dtype.

    Copies only when it must: a non-contiguous input, a big-endian one or a
    tensor that lives off the CPU.  Raises TypeError for objects that are not
    arrays, and ValueError for unsupported dtypes and for tensors without
    dense data (sparse, meta, nested, quantized), naming ``what``.
    """
    if is_torch_tensor(obj):
        from .torch.convert import tensor_to_numpy
        arr = tensor_to_numpy(obj, what=what)
    elif isinstance(obj, np.ndarray):
        arr = obj
    elif isinstance(obj, np.generic):
        arr = np.asarray(obj)
    else:
        raise TypeError(f"{what}: expected a numpy array or torch tensor, got {type(obj).__name__}")
    try:
        dtypes.name_of(arr.dtype)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    # np.ascontiguousarray would turn a 0-d array into a 1-d one.
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def payload_view(arr: np.ndarray) -> memoryview:
    return memoryview(arr.reshape(-1).view(np.uint8))
