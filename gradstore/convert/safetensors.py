"""safetensors files: named tensors, keys built like those of .pt files (see naming).

Read through torch when it is installed, because the numpy side of the
safetensors library does not know bfloat16; without torch, files holding no
bf16 tensor still read.
"""
from __future__ import annotations

import json
import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .. import dtypes
from ..arrays import as_array
from . import naming
from .source import Item, Part, SourceError, edges_of, one_line, opens

SUFFIXES = (".safetensors",)
LIBRARY = "safetensors"   # what reading and writing need; imported only then
PART_BYTES = 256 << 20
_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
           "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32",
           "F32": "float32", "I64": "int64", "U64": "uint64", "F64": "float64"}


def _spec(f, name: str) -> tuple[str, tuple[int, ...]]:
    """(gradstore dtype name, shape) from the header, or ValueError."""
    s = f.get_slice(name)
    dt = _DTYPES.get(s.get_dtype())
    if dt is None:
        raise ValueError(f"dtype {s.get_dtype()}, which gradstore cannot store")
    return dt, tuple(s.get_shape())


def _framework() -> str:
    try:
        import torch  # noqa: F401
        return "pt"
    except ImportError:
        return "numpy"


@contextmanager
def _open(path: str | os.PathLike, framework: str = "numpy"):
    try:
        from safetensors import safe_open
    except ImportError:
        raise SourceError(f"{path}: reading .safetensors files needs safetensors "
                          "(pip install 'gradstore[safetensors]')") from None
    try:
        f = safe_open(str(path), framework=framework)
    except Exception as exc:  # SafetensorError, OSError
        raise SourceError(f"{path}: not a readable safetensors file ({one_line(exc)})") from None
    with f:
        yield f


def plan(path: str | os.PathLike, dtype: str | None = None) -> list[Part]:
    """Whole files, split into parts of about PART_BYTES (in file order) when larger."""
    with _open(path) as f:
        sizes = []
        for name in f.keys():
            s = f.get_slice(name)
            n = 1
            for d in s.get_shape():
                n *= d
            sizes.append((name, n * dtypes.to_numpy(_DTYPES.get(s.get_dtype(), "uint8")).itemsize))
    if not sizes:
        raise SourceError(f"{path}: the safetensors file holds no tensor")
    parts, names, size = [], [], 0
    for name, n in sizes:
        if names and size + n > PART_BYTES:
            parts.append(Part(str(path), "safetensors", tuple(names), size))
            names, size = [], 0
        names.append(name)
        size += n
    parts.append(Part(str(path), "safetensors", tuple(names), size))
    return parts


@contextmanager
def read(part: Part, dtype: str | None = None) -> Iterator[list[Item]]:
    prefix = naming.prefix_of(part.path)
    offsets = _offsets(part.path)
    with _open(part.path, _framework()) as f:
        names = part.names if part.names is not None else list(f.keys())
        items = []
        for name in names:
            try:
                dt, shape = _spec(f, name)
                items.append(Item(naming.join(prefix, name), dt, shape,
                                  array=lambda n=name: _tensor(f, part.path, n),
                                  offset=offsets.get(name),
                                  edges=lambda k, n=name: edges_of(_Sliced(f, n), k)))
            except ValueError as exc:
                raise SourceError(f"{part.path}: tensor {name!r}: {one_line(exc)}") from None
        yield items


def _offsets(path: str | os.PathLike) -> dict[str, int]:
    """{tensor name: file offset of its bytes}, from the header (the format's own layout:
    an 8-byte header length, the JSON header, then the tensors, little-endian, C order)."""
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        return {name: 8 + n + int(spec["data_offsets"][0]) for name, spec in header.items()
                if name != "__metadata__"}
    except (OSError, ValueError, TypeError, KeyError, IndexError, struct.error, AttributeError):
        return {}   # safe_open says what is wrong, or the tensors are copied out


class _Sliced:
    """A tensor of an open file that reads only the values it is sliced to."""

    def __init__(self, f, name: str):
        self.slice = f.get_slice(name)
        self.shape = tuple(self.slice.get_shape())

    def __getitem__(self, index):
        return as_array(self.slice[index])


def _tensor(f, path: str, name: str):
    """One tensor, read when it is copied out, so a part holds one at a time."""
    try:
        return as_array(f.get_tensor(name), what=f"tensor {name!r}")
    except Exception as exc:  # SafetensorError, bf16 without torch
        raise SourceError(f"{path}: tensor {name!r}: {one_line(exc)}") from None


def is_complete(path: str | os.PathLike) -> bool:
    """True when the header parses and its tensors cover the file exactly."""
    return opens(_open, path)


def save(path: str | os.PathLike, tensors: dict) -> None:
    """Write ``{name: tensor}``; torch tensors if torch is there (bf16 needs it)."""
    if _framework() == "pt":
        from safetensors.torch import save_file
    else:
        from safetensors.numpy import save_file
    save_file(tensors, str(Path(path)))
