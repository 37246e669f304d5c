"""Zero-copy moves between torch tensors and numpy arrays, bf16 included."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .. import dtypes

_TO_TORCH = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int8": torch.int8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8,
    "uint16": torch.uint16, "uint32": torch.uint32, "uint64": torch.uint64,
    "bool": torch.bool,
}
_FROM_TORCH = {v: k for k, v in _TO_TORCH.items()}


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (a copy only if it is on another device)."""
    name = _FROM_TORCH.get(t.dtype)
    if name is None:
        raise ValueError(f"unsupported dtype {t.dtype}; supported: {', '.join(dtypes.NAMES)}")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if name == "bfloat16":
        return t.view(torch.int16).numpy().view(dtypes.to_numpy("bfloat16"))
    if name in ("uint16", "uint32", "uint64"):
        signed = {"uint16": torch.int16, "uint32": torch.int32, "uint64": torch.int64}[name]
        return t.view(signed).numpy().view(dtypes.to_numpy(name))
    return t.numpy()


def buffer_to_tensor(buffer, name: str, shape: tuple[int, ...], offset: int) -> torch.Tensor:
    """A tensor over ``buffer`` at ``offset`` that shares its memory (no copy)."""
    dtype = _TO_TORCH[name]
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():
        # Read-only mmaps are not writable; torch warns, and we document it.
        warnings.simplefilter("ignore", UserWarning)
        t = torch.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
    return t.reshape(shape)
