"""What every source format offers the converter, and how a file finds its format.

A source module (pt.py, h5.py, safetensors.py) is thin and has the same shape:

``SUFFIXES``, ``LIBRARY``
    the file name endings it reads, and the library it needs for them.
``plan(path, dtype) -> list[Part]``
    cheap: the units of work a file splits into (a bucket each, where the
    format allows), with their approximate sizes.  May read metadata only.
``read(part, dtype) -> ContextManager[list[Item]]``
    the tensors of one part, ready to be copied out.
``is_complete(path) -> bool``
    a cheap structural check that a file is not still being written.
``save(path, tensors)`` / ``Pack``
    the way back, used by export.

Reading happens in worker processes, so parts and errors cross process
boundaries and must stay picklable.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

from .. import dtypes
from ..errors import GradstoreError

MODULES = ("pt", "h5", "safetensors")   # one per format; each imports its library lazily
_suffixes: dict[str, str] = {}


class SourceError(GradstoreError):
    """A source file cannot be converted; the message says why, in one line."""


@dataclass(frozen=True)
class Part:
    """One unit of work: a whole file, or a selection of its tensors."""

    path: str
    format: str                           # module name: "pt", "h5", "safetensors"
    names: tuple[str, ...] | None = None  # the format's own tensor names; None = all
    nbytes: int = 0                       # an estimate, for progress and scheduling


class Item:
    """One tensor of a part: its key, dtype and shape, and how to get its bytes.

    ``offset`` says where the bytes sit in the part's file, when they sit
    there whole: C order, little-endian, this dtype, uncompressed.  The
    converter then stores them straight from the file instead of copying
    them out.  An offset is a claim to check, not to trust: ``edges`` (the
    first and last few values, read through the format's library; None
    when the format itself defines the offsets) are compared with the bytes
    at the offset, and the stored checksum must equal the one read.
    """

    def __init__(self, key: str, dtype: str, shape: tuple[int, ...],
                 array: Callable[[], np.ndarray] | None = None,
                 read_into: Callable[[np.ndarray], None] | None = None,
                 offset: int | None = None,
                 edges: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None):
        self.key = key
        self.dtype = dtype
        self.shape = tuple(int(n) for n in shape)
        self._array = array
        self._read_into = read_into
        self.offset = offset
        self.edges = edges

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * dtypes.to_numpy(self.dtype).itemsize

    def array(self) -> np.ndarray:
        """The tensor as a C-contiguous array (a view where the format allows)."""
        if self._array is not None:
            return self._array()
        out = np.empty(self.shape, dtypes.to_numpy(self.dtype))
        self._read_into(out)
        return out

    def read_into(self, out: np.ndarray) -> None:
        """Fill ``out`` (C-contiguous, this item's dtype and shape) with the tensor."""
        if self._read_into is not None:
            self._read_into(out)
        else:
            np.copyto(out, self._array(), casting="no")


def edges_of(arr, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first and last ``count`` values (C order) of an array-like that slices like numpy:
    a numpy array, a torch tensor or an h5py dataset, which then reads only those values."""
    shape = tuple(arr.shape)
    if not shape:
        whole = np.asarray(arr[()]).reshape(-1)
        return whole, whole
    head = tuple(0 for _ in shape[:-1]) + (slice(0, count),)
    tail = tuple(n - 1 for n in shape[:-1]) + (slice(max(shape[-1] - count, 0), None),)
    return np.asarray(arr[head]).reshape(-1), np.asarray(arr[tail]).reshape(-1)


def _formats() -> dict[str, str]:
    """{suffix: module name}, from each module's SUFFIXES."""
    if not _suffixes:
        _suffixes.update({sfx: name for name in MODULES for sfx in module(name).SUFFIXES})
    return _suffixes


def format_of(path: str | os.PathLike) -> str | None:
    """The source module name for a file, or None if gradstore does not read it."""
    return _formats().get(Path(path).suffix.lower())


def module(name: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.{name}")


def module_for(path: str | os.PathLike) -> ModuleType:
    name = format_of(path)
    if name is None:
        raise SourceError(f"{path}: not a source gradstore reads "
                          f"(expected {', '.join(sorted(_formats()))})")
    return module(name)


def is_candidate(path: Path) -> bool:
    """A file worth looking at: a known suffix, not hidden (tools write .tmp dot files)."""
    return not path.name.startswith(".") and format_of(path) is not None


def discover(paths: list[str | os.PathLike]) -> list[Path]:
    """The source files under ``paths``: files as given, directories searched recursively.

    Directories yield their files in a stable order (sorted by path).  A file
    named explicitly must have a known suffix; SourceError otherwise.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            batch = []
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                batch.extend(Path(root) / f for f in files if is_candidate(Path(root) / f))
            batch.sort()
        elif p.exists():
            if format_of(p) is None:
                raise SourceError(f"{p}: not a source gradstore reads "
                                  f"(expected {', '.join(sorted(_formats()))})")
            batch = [p]
        else:
            raise SourceError(f"{p}: no such file or directory")
        for f in batch:
            resolved = f.resolve()
            if resolved not in seen:
                seen.add(resolved)
                found.append(f)
    return found


def one_line(exc: BaseException) -> str:
    """An exception as one short line, for error reports."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def opens(open_file: Callable, path: str | os.PathLike) -> bool:
    """True when ``open_file(path)`` (a context manager raising SourceError) succeeds:
    the completeness test of formats whose reader checks the whole structure."""
    try:
        with open_file(path):
            return True
    except SourceError:
        return False
