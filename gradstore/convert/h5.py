"""HDF5 packs: ``/R_{r}_E_{e}_S_{s}/B_{b}/{module}`` datasets, or any other layout.

The pack layout maps to keys ``R_{r}_E_{e}_S_{s}_B_{b}/{module}``; datasets
elsewhere keep their path (without the leading '/') as key.  HDF5 has no
bfloat16, so packs hold bf16 gradients as float32: ``--dtype`` declares the
true dtype and every floating-point dataset is cast back to it, which must be
exact (the float32 bytes of a bf16 value have their low 16 bits zero).
Export marks such datasets with a ``gradstore_dtype`` attribute, which wins
over ``--dtype``, so exported packs convert back without help.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import dtypes
from ..keys import bucket_name, check_key, sort_key, try_parse
from ..progress import human_bytes
from .source import Item, Part, SourceError, edges_of, one_line, opens

SUFFIXES = (".h5", ".hdf5")
LIBRARY = "h5py"   # what reading and writing need; imported only then
DTYPE_ATTR = "gradstore_dtype"
PART_BYTES = 256 << 20   # split groups larger than this into several parts
PACK_BYTES = 1800 * 10**9
_PACK_PATH = re.compile(r"R_(\d+)_E_(\d+)_S_(\d+)/B_(\d+)/(.+)", re.DOTALL)


def _h5py():
    try:
        import h5py
    except ImportError:
        raise SourceError("reading .h5 files needs h5py (pip install 'gradstore[h5]')") from None
    return h5py


def key_of(dataset_path: str) -> str:
    """The key of a dataset: the pack layout becomes a structured key."""
    path = dataset_path.lstrip("/")
    m = _PACK_PATH.fullmatch(path)
    if m:
        r, e, s, b, module = m.groups()
        return check_key(f"{bucket_name(int(r), int(e), int(s), int(b))}/{module}")
    return check_key(path)


def dataset_path_of(key: str) -> str:
    """Where export puts a key: the inverse of ``key_of``."""
    k = try_parse(key)
    if k is None:
        return "/" + key
    return f"/R_{k.rank}_E_{k.epoch}_S_{k.step}/B_{k.bucket}/{k.module}"


def _open(path: str | os.PathLike):
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise SourceError(f"{path}: not a readable HDF5 file ({one_line(exc)})") from None


def _datasets(f) -> list[tuple[str, object]]:
    h5py = _h5py()
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found.append(("/" + name, obj))
    f.visititems(visit)
    return found


def _group_of(dataset_path: str, key: str) -> str:
    """Datasets of one bucket (or one HDF5 group) travel together."""
    k = try_parse(key)
    return k.bucket_name if k is not None else dataset_path.rsplit("/", 1)[0]


def memory_budget() -> int:
    """The most one dataset may declare: a reader holds it in memory, and its spool
    copy often sits in memory too (tmpfs), so a quarter of the machine's RAM."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 1 << 32


def _check_size(path, dpath: str, ds, nbytes: int, file_size: int, budget: int) -> None:
    """SourceError when a dataset declares more than a reader can hold, or (stored
    without a filter) more than the whole file: a crafted or damaged header, which
    would otherwise be read whole before anything notices."""
    if nbytes <= min(budget, file_size):
        return
    declared = (f"dataset {dpath} declares {human_bytes(nbytes)} "
                f"({'x'.join(map(str, ds.shape))} {ds.dtype})")
    if nbytes > budget:
        raise SourceError(f"{path}: {declared}, more than the {human_bytes(budget)} a reader may "
                          "hold in memory; none of this file is converted")
    try:
        filtered = ds.id.get_create_plist().get_nfilters() > 0
    except Exception:  # an HDF5 that cannot say: judge by the budget alone
        return
    if not filtered and nbytes > file_size:
        raise SourceError(f"{path}: {declared}, more than the whole file holds "
                          f"({human_bytes(file_size)}): a damaged or crafted header; "
                          "none of this file is converted")


def plan(path: str | os.PathLike, dtype: str | None = None) -> list[Part]:
    """One part per bucket (or group), split where a group exceeds PART_BYTES.

    Every dataset's declared size is checked first (see ``_check_size``), so a
    file that declares too much fails whole, before any of it is read.
    """
    budget = memory_budget()
    with _open(path) as f:
        try:
            file_size = os.path.getsize(path)
            rows = []
            for dpath, ds in _datasets(f):
                try:
                    key = key_of(dpath)
                except ValueError as exc:
                    raise SourceError(f"{path}: dataset {dpath}: {one_line(exc)}") from None
                size = ds.size * ds.dtype.itemsize if ds.shape is not None else 0
                _check_size(path, dpath, ds, size, file_size, budget)
                rows.append((sort_key(key), _group_of(dpath, key), dpath, size))
        except (OSError, RuntimeError, KeyError) as exc:
            raise SourceError(f"{path}: cannot read the HDF5 structure ({one_line(exc)})") from None
    if not rows:
        raise SourceError(f"{path}: the HDF5 file holds no dataset")
    rows.sort()
    parts: list[Part] = []
    names: list[str] = []
    group, size = None, 0
    for _, g, dpath, n in rows:
        if names and (g != group or size + n > PART_BYTES):
            parts.append(Part(str(path), "h5", tuple(names), size))
            names, size = [], 0
        names.append(dpath)
        group, size = g, size + n
    parts.append(Part(str(path), "h5", tuple(names), size))
    return parts


def _target_dtype(ds, dpath: str, declared: str | None) -> tuple[np.dtype, np.dtype]:
    """(dtype the file holds, little-endian; dtype to store) of a dataset."""
    if ds.shape is None:
        raise ValueError(f"dataset {dpath} is empty (no dataspace)")
    try:
        held = np.dtype(ds.dtype).newbyteorder("<")
        dtypes.name_of(held)
    except (ValueError, TypeError):
        raise ValueError(f"dataset {dpath} has dtype {ds.dtype}, which gradstore cannot store") from None
    marked = ds.attrs.get(DTYPE_ATTR)
    if marked is not None:
        name = marked.decode() if isinstance(marked, bytes) else str(marked)
        return held, dtypes.to_numpy(name)
    if declared is not None and held.kind == "f":
        return held, dtypes.to_numpy(declared)
    return held, held


def cast_exact(src: np.ndarray, out: np.ndarray, what: str) -> None:
    """``out[...] = src`` in out's dtype, or ValueError if a value would change."""
    np.copyto(out, src, casting="unsafe")
    back = out.astype(src.dtype)
    bits = np.dtype(f"u{src.dtype.itemsize}")
    if not np.array_equal(back.view(bits), src.view(bits)):
        name = dtypes.name_of(out.dtype)
        raise ValueError(f"{what}: values are not exactly {name}; declaring --dtype {name} "
                         "would lose data")


def _reader(ds, dpath: str, held: np.dtype, target: np.dtype):
    def read_into(out: np.ndarray) -> None:
        if out.size == 0:
            return
        if held == target:
            ds.read_direct(out)
            return
        src = np.empty(out.shape, held)
        ds.read_direct(src)
        cast_exact(src, out, f"dataset {dpath}")
    return read_into


def _file_offset(ds, held: np.dtype, target: np.dtype) -> int | None:
    """Where a dataset's bytes sit in the file, when they sit there whole and are
    stored as they are: contiguous layout, no filter, no external file, no cast."""
    if held != target or ds.dtype.byteorder == ">" or not ds.size:
        return None
    h5d = _h5py().h5d
    try:
        plist = ds.id.get_create_plist()
        if plist.get_layout() != h5d.CONTIGUOUS or plist.get_external_count() or plist.get_nfilters():
            return None
        return ds.id.get_offset()
    except Exception:  # an HDF5 too old to say, or a dataset it cannot place
        return None


@contextmanager
def read(part: Part, dtype: str | None = None) -> Iterator[list[Item]]:
    with _open(part.path) as f:
        items = []
        names = part.names if part.names is not None else [p for p, _ in _datasets(f)]
        for dpath in names:
            try:
                ds = f[dpath]
                held, target = _target_dtype(ds, dpath, dtype)
                items.append(Item(key_of(dpath), dtypes.name_of(target), ds.shape,
                                  read_into=_reader(ds, dpath, held, target),
                                  offset=_file_offset(ds, held, target),
                                  edges=lambda n, d=ds: edges_of(d, n)))
            except (ValueError, KeyError, OSError) as exc:
                raise SourceError(f"{part.path}: {one_line(exc)}") from None
        yield items


def is_complete(path: str | os.PathLike) -> bool:
    """True when HDF5 opens the file (it refuses files another process holds for writing)."""
    return opens(_open, path)


class Pack:
    """Writes datasets into pack_000.h5, pack_001.h5, ... rolling over at ``cap`` bytes.

    Each pack is written under a hidden temporary name and renamed when full
    or closed, so nobody (a watching converter included) sees a partial pack.
    """

    def __init__(self, directory: str | os.PathLike, cap: int = PACK_BYTES):
        self.dir = Path(directory)
        self.cap = cap
        self.files: list[Path] = []
        self._f = None
        self._tmp: Path | None = None
        self._size = 0

    def _roll(self) -> None:
        self._finish()
        name = f"pack_{len(self.files):03d}.h5"
        final = self.dir / name
        if final.exists():
            raise FileExistsError(f"{final} already exists")
        self._tmp = self.dir / f".{name}.tmp"
        self._f = _h5py().File(self._tmp, "w")
        self.files.append(final)
        self._size = 0

    def add(self, key: str, arr: np.ndarray) -> None:
        if self._f is None or (self._size and self._size + arr.nbytes > self.cap):
            self._roll()
        name = dtypes.name_of(arr.dtype)
        if name == "bfloat16":  # HDF5 has no bf16: float32 holds it exactly
            ds = self._f.create_dataset(dataset_path_of(key), data=arr.astype(np.float32))
            ds.attrs[DTYPE_ATTR] = name
        else:
            self._f.create_dataset(dataset_path_of(key), data=arr)
        self._size += arr.nbytes

    def _finish(self) -> None:
        if self._f is not None:
            self._f.close()
            os.replace(self._tmp, self.files[-1])
            self._f = None

    def close(self) -> None:
        self._finish()

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._tmp.unlink(missing_ok=True)
            self.files.pop()
            self._f = None

    def __enter__(self) -> "Pack":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
