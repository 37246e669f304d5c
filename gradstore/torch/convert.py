"""Moves between torch tensors, numpy arrays and segment files, bf16 included."""
from __future__ import annotations

import ctypes
import math
import mmap
import os
import weakref

import numpy as np
import torch

from .. import dtypes
from ..errors import FormatError

_TO_TORCH = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int8": torch.int8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8,
    "uint16": torch.uint16, "uint32": torch.uint32, "uint64": torch.uint64,
    "bool": torch.bool,
}
_FROM_TORCH = {v: k for k, v in _TO_TORCH.items()}
_UNSIGNED_AS_SIGNED = {"uint16": torch.int16, "uint32": torch.int32, "uint64": torch.int64}

MAP_MIN_BYTES = 64 * 1024
"""Smaller payloads are copied into a tensor of their own: cheaper than a mapping."""


def _unstorable(t: torch.Tensor) -> str | None:
    """Why ``t`` has no dense bytes to store, or None if it has."""
    if t.is_meta:
        return "a meta tensor holds no data"
    if t.is_nested:
        return "nested tensors are not supported; store each component"
    if t.layout != torch.strided:
        return f"{t.layout} tensors are not supported; store t.to_dense()"
    if t.is_quantized:
        return f"quantized tensors ({t.dtype}) are not supported; store t.dequantize() or t.int_repr()"
    if t.dtype not in _FROM_TORCH:
        return f"unsupported dtype {t.dtype}; supported: {', '.join(dtypes.NAMES)}"
    return None


def tensor_to_numpy(t: torch.Tensor, *, what: str = "tensor") -> np.ndarray:
    """A numpy view of a dense CPU tensor (a copy only if it must move or be made contiguous).

    Tensors without dense bytes of a storable dtype (sparse, meta, nested,
    quantized, complex, ...) raise ValueError naming ``what``.
    """
    problem = _unstorable(t)
    if problem is not None:
        raise ValueError(f"{what}: {problem}")
    name = _FROM_TORCH[t.dtype]
    try:
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.resolve_neg().contiguous()
        if name == "bfloat16":
            return t.view(torch.int16).numpy().view(dtypes.to_numpy("bfloat16"))
        if name in _UNSIGNED_AS_SIGNED:
            return t.view(_UNSIGNED_AS_SIGNED[name]).numpy().view(dtypes.to_numpy(name))
        return t.numpy()
    except (RuntimeError, TypeError) as exc:  # tensor subclasses torch cannot hand over
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{what}: cannot read the tensor's data ({first})") from None


def array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """An ordinary tensor that owns a copy of ``arr`` (bf16 stays bf16)."""
    out = torch.empty(arr.shape, dtype=_TO_TORCH[dtypes.name_of(arr.dtype)])
    if out.numel():
        np.copyto(tensor_to_numpy(out), arr, casting="no")
    return out


def file_tensor(path: str | os.PathLike, name: str, shape: tuple[int, ...], offset: int) -> torch.Tensor:
    """A writable tensor over the bytes of ``path`` at ``offset``, zero-copy and private.

    Only the pages holding the tensor are mapped, copy-on-write (MAP_PRIVATE):
    reads share the page cache, an in-place op gives the tensor its own copy
    of just the pages it touches, and nothing ever reaches the file.  Each
    call maps afresh, so two tensors of one record never see each other's
    writes.  The mapping lives as long as the tensor, whatever happens to the
    store or to the file's name, and holds no file descriptor.
    """
    dtype = _TO_TORCH[name]
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    end = offset + count * dtype.itemsize
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    pages = _private_pages(path, start, end)
    return torch.frombuffer(pages, dtype=dtype, count=count, offset=offset - start).reshape(shape)


# libc's mmap, because Python's mmap objects (before 3.13) each keep a duplicate
# file descriptor open: a few thousand live tensors would exhaust them.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


def _private_pages(path: str | os.PathLike, start: int, end: int) -> ctypes.Array:
    """Bytes ``start:end`` of ``path`` mapped copy-on-write; unmapped when garbage."""
    length = end - start
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size < end:  # touching pages past the end of the file would be a SIGBUS
            raise FormatError(f"{path}: truncated, {size} bytes but the record ends at {end}")
        addr = _libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, start)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"{os.strerror(err)}: mapping {length} bytes at offset {start} "
                               f"(too many live tensors? gs.torch(key, copy=True) maps nothing)", str(path))
    finally:
        os.close(fd)
    pages = (ctypes.c_ubyte * length).from_address(addr)
    ref = weakref.ref(pages, _unmap)
    _mapped[id(ref)] = (ref, addr, length)
    return pages


# Live mappings by id of the weak reference that unmaps them.  Nothing is
# unmapped at exit: tensors still alive then may yet be read.
_mapped: dict[int, tuple[weakref.ref, int, int]] = {}


def _unmap(ref: weakref.ref) -> None:
    _, addr, length = _mapped.pop(id(ref))
    _libc.munmap(addr, length)
