"""The way back: a subset of a store as .pt, .safetensors or HDF5 files.

Files are laid out the way convert reads them, so an export converts back to
the same keys: one ``R_E_S_B.pt`` (or .safetensors) per bucket holding
``{module: tensor}``, or HDF5 packs ``pack_000.h5, ...`` in the
``/R_E_S/B_b/module`` layout.  Each file is written under a hidden name and
renamed when complete, so a converter watching the directory never sees a
partial file.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import h5, naming
from .source import SourceError

FORMATS = {"pt": ".pt", "safetensors": ".safetensors", "h5": ".h5"}


@dataclass
class ExportReport:
    files: list[Path] = field(default_factory=list)
    tensors: int = 0
    nbytes: int = 0
    elapsed: float = 0.0


def _group(keys: list[str]) -> dict[str, list[tuple[str, str]]]:
    """{file stem: [(tensor name, key)]} in the store's natural order."""
    files: dict[str, list[tuple[str, str]]] = {}
    for key in keys:
        try:
            stem, name = naming.split(key)
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        files.setdefault(stem, []).append((name, key))
    return files


def _tensors(gs, pairs: list[tuple[str, str]]) -> dict:
    """{name: tensor} views of the store: torch tensors when torch is there (bf16 needs it)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return {name: gs[key] for name, key in pairs}
    return {name: gs.torch(key) for name, key in pairs}


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())   # some writers create 0600 files: these are for sharing
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export(store, to: str | os.PathLike, *, format: str = "pt", rank=None, epoch=None,
           step=None, bucket=None, module=None, pack_size: int = h5.PACK_BYTES,
           progress=None) -> ExportReport:
    """Write the selected keys of ``store`` (a path or an open store) into directory ``to``.

    Filters are those of ``Store.keys``.  Refuses to overwrite existing files.
    """
    import gradstore
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r} (use {', '.join(FORMATS)})")
    t0 = time.monotonic()
    out = Path(to)
    report = ExportReport()
    own = isinstance(store, (str, os.PathLike))
    gs = gradstore.open(store, "r") if own else store
    try:
        keys = gs.keys(rank=rank, epoch=epoch, step=step, bucket=bucket, module=module)
        if not keys:
            raise SourceError(f"{gs.path}: no key matches the selection")
        out.mkdir(parents=True, exist_ok=True)
        if format == "h5":
            first = out / "pack_000.h5"
            if first.exists():
                raise FileExistsError(f"{first} already exists; export into another directory")
            with h5.Pack(out, pack_size) as pack:
                for key in keys:
                    pack.add(key, gs[key])
                    report.tensors += 1
                    report.nbytes += gs.entry(key).nbytes
                    if progress:
                        progress(gs.entry(key).nbytes)
            report.files = list(pack.files)
        else:
            from . import source
            mod = source.module(format)
            groups = _group(keys)
            targets = {stem: out / f"{stem}{FORMATS[format]}" for stem in groups}
            clash = [str(p) for p in targets.values() if p.exists()]
            if clash:
                raise FileExistsError(f"{clash[0]} already exists"
                                      + (f" (and {len(clash) - 1} more)" if len(clash) > 1 else "")
                                      + "; export into another directory")
            for stem, pairs in groups.items():
                tensors = _tensors(gs, pairs)
                _atomic(targets[stem], lambda p, t=tensors: mod.save(p, t))
                nbytes = sum(gs.entry(k).nbytes for _, k in pairs)
                report.files.append(targets[stem])
                report.tensors += len(pairs)
                report.nbytes += nbytes
                if progress:
                    progress(nbytes)
    finally:
        if own:
            gs.close()
    report.elapsed = time.monotonic() - t0
    return report
