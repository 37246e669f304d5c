"""PyTorch files (.pt, .pth): a dict of tensors, a single tensor, or nested dicts.

Only ``torch.load(weights_only=True, map_location="cpu")`` touches a file, so
a pickle that holds anything but tensors and containers is refused, never run.
Zip-format files (every torch.save since 1.6) are memory-mapped, and there
each storage is a zip record stored uncompressed: a contiguous tensor's
bytes then have a file offset (see ``_offsets``), and are not copied out.
"""
from __future__ import annotations

import os
import pickle
import struct
import sys
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import dtypes
from ..arrays import as_array, is_torch_tensor
from . import naming
from .source import Item, Part, SourceError, edges_of, one_line

SUFFIXES = (".pt", ".pth")
LIBRARY = "torch"   # what reading and writing need; imported only then
_ZIP_LOCAL_MAGIC = b"PK\x03\x04"
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")   # magic ... name length, extra length


def plan(path: str | os.PathLike, dtype: str | None = None) -> list[Part]:
    """A .pt file is one part: torch.load cannot read a subset of it."""
    return [Part(str(path), "pt", None, os.path.getsize(path))]


def _weights_only_reason(exc: BaseException) -> str:
    """The weights-only unpickler's own reason, whole: torch wraps it in paragraphs
    of advice (on loading the file unsafely) that do not fit one line."""
    inner = exc.__context__ if isinstance(exc.__context__, pickle.UnpicklingError) else exc
    text = " ".join(str(inner).split())
    text = text.split("WeightsUnpickler error:")[-1]
    for advice in ("Please use `torch.serialization", "Please file an issue", "Check the documentation"):
        text = text.split(advice)[0]
    text = text.strip().rstrip(".")
    if not text or "Weights only load failed" in text:
        return "it holds objects other than tensors and plain containers"
    if len(text) > 200:   # a long class name or repr: cut between words, and say so
        text = text[:200].rsplit(" ", 1)[0] + " ..."
    return text


def load(path: str | os.PathLike):
    """The object in a torch file, loaded safely; SourceError with a clear reason otherwise."""
    try:
        import torch
    except ImportError:
        raise SourceError(f"{path}: reading .pt files needs torch "
                          "(pip install 'gradstore[torch]')") from None
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {one_line(exc)}") from None
    if not head:
        raise SourceError(f"{path}: truncated or corrupt torch file (it is empty)")
    try:
        mmap = zipfile.is_zipfile(path)
        if head == _ZIP_LOCAL_MAGIC and not mmap:
            raise SourceError(f"{path}: truncated or corrupt torch file "
                              "(its zip archive has no central directory)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise SourceError(f"{path}: not a file of tensors: torch.load(weights_only=True) refused it "
                          f"({_weights_only_reason(exc)})") from None
    except SourceError:
        raise
    except Exception as exc:  # torch raises RuntimeError, OSError, EOFError, ... on bad bytes
        raise SourceError(f"{path}: truncated or corrupt torch file ({one_line(exc)})") from None


def flatten(obj, name: str = "") -> Iterator[tuple[str, object]]:
    """(name, tensor) pairs of nested dicts/lists, names joined with '/'."""
    if is_torch_tensor(obj) or isinstance(obj, np.ndarray):
        yield name, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{name}/{k}" if name else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{name}/{i}" if name else str(i))
    else:
        where = f"{name!r} is" if name else "it holds"
        raise SourceError(f"not a file of tensors: {where} a {type(obj).__name__}")


def items_of(path: str | os.PathLike, obj) -> list[Item]:
    """The items of a loaded object; keys from the file name (see naming)."""
    prefix = naming.prefix_of(path)
    out = []
    try:
        pairs = list(flatten(obj))
    except SourceError as exc:
        raise SourceError(f"{path}: {exc}") from None
    if not pairs:
        raise SourceError(f"{path}: not a file of tensors: it holds no tensor")
    offsets = _offsets(path, [t for _, t in pairs])
    for (name, tensor), offset in zip(pairs, offsets, strict=True):
        try:
            key = naming.join(prefix, name)
            arr = as_array(tensor, what=f"tensor {name!r}" if name else "tensor")
        except (ValueError, TypeError) as exc:
            raise SourceError(f"{path}: {one_line(exc)}") from None
        if arr.dtype.byteorder == ">" or not arr.nbytes:
            offset = None
        out.append(Item(key, dtypes.name_of(arr.dtype), arr.shape, array=lambda a=arr: a,
                        offset=offset, edges=lambda n, a=arr: edges_of(a, n)))
    return out


def _records(path: str | os.PathLike) -> dict[int, int]:
    """{file offset: size} of the storages in a torch zip file that are stored uncompressed."""
    out = {}
    with open(path, "rb") as f, zipfile.ZipFile(f) as z:
        infos = z.infolist()
        if any(i.filename.endswith("/byteorder") and z.read(i) != b"little" for i in infos):
            return {}
        for info in infos:
            parent = info.filename.rsplit("/", 2)[-2:-1]
            if parent != ["data"] or info.compress_type != zipfile.ZIP_STORED or not info.file_size:
                continue
            f.seek(info.header_offset)
            magic, name_len, extra_len = _ZIP_LOCAL_HEADER.unpack(f.read(_ZIP_LOCAL_HEADER.size))
            if magic == _ZIP_LOCAL_MAGIC:
                out[info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len] = info.file_size
    return out


def _offsets(path: str | os.PathLike, tensors: list) -> list[int | None]:
    """The file offset of each tensor's bytes, None where they are not there contiguously.

    torch.load(mmap=True) maps the whole file and gives each storage the
    memory of its zip record, so address minus base is the file offset.
    The base is found by matching the lowest storage to the first record,
    and every storage must then land on a record of its size; anything else
    (an older torch, a foreign writer, views into storages we cannot place)
    gives None, and those tensors are copied out the usual way.
    """
    tensors = [t if is_torch_tensor(t) else None for t in tensors]
    storages = {}
    for t in tensors:
        if t is not None and t.untyped_storage().nbytes():
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
    if sys.byteorder != "little" or not storages:
        return [None] * len(tensors)
    try:
        records = _records(path)
    except (OSError, zipfile.BadZipFile, struct.error, ValueError):
        return [None] * len(tensors)
    if not records:
        return [None] * len(tensors)
    base = min(storages) - min(records)
    if any(records.get(ptr - base) != size for ptr, size in storages.items()):
        return [None] * len(tensors)
    return [t.data_ptr() - base if t is not None and t.is_contiguous() else None for t in tensors]


@contextmanager
def read(part: Part, dtype: str | None = None) -> Iterator[list[Item]]:
    obj = load(part.path)
    try:
        yield items_of(part.path, obj)
    finally:
        del obj  # drops the file mapping


def is_complete(path: str | os.PathLike) -> bool:
    """False while torch.save is still writing: its zip central directory comes last."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != _ZIP_LOCAL_MAGIC:
        return len(head) > 0  # legacy or foreign format: torch.load will judge it
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def save(path: str | os.PathLike, tensors: dict) -> None:
    """Write ``{name: tensor}`` (a single tensor if the only name is empty)."""
    import torch
    obj = tensors[""] if list(tensors) == [""] else tensors
    torch.save(obj, Path(path))
