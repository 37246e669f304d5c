"""The way back: a subset of a store as .pt, .safetensors or HDF5 files.

Files are laid out the way convert reads them, so an export converts back to
the same keys: one ``R_E_S_B.pt`` (or .safetensors) per bucket holding
``{module: tensor}``, or HDF5 packs ``pack_000.h5, ...`` in the
``/R_E_S/B_b/module`` layout.  Each file is written under a hidden name and
renamed when complete, so a converter watching the directory never sees a
partial file.

Keys stored as encoded variants only (gradstore.encoded) have no tensor to
write: with ``codec`` they are exported decoded from that codec's variant
(lossy if the codec is), otherwise they are left out and counted, and a
selection of nothing else is an error that says how to export them.
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
    decoded: int = 0          # of the tensors, decoded from ``codec`` variants
    lossy: bool = False       # ``codec`` does not give back the tensors bit for bit
    encoded_left_out: int = 0   # keys held as encoded variants only, not exported (no ``codec``)


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


class _Reader:
    """A key's tensor: a view of the store, or decoded from its ``codec`` variant when
    the key is held as encoded variants only."""

    def __init__(self, gs, encoded: set[str], codec):
        self.gs, self.encoded, self.codec = gs, encoded, codec

    def array(self, key: str):
        return self.gs.variant(key, self.codec) if key in self.encoded else self.gs[key]

    def tensors(self, pairs: list[tuple[str, str]]) -> dict:
        """{name: tensor}: torch tensors when torch is there (bf16 needs it)."""
        try:
            from ..torch.convert import array_to_tensor
        except ImportError:
            return {name: self.array(key) for name, key in pairs}
        return {name: array_to_tensor(self.array(key)) if key in self.encoded else self.gs.torch(key)
                for name, key in pairs}


def _selection(gs, codec, filters: dict) -> tuple[list[str], set[str], int]:
    """(keys to export in natural order, those of them to decode from ``codec``, encoded-only
    keys left out)."""
    from ..keys import sort_key
    keys = gs.keys(**filters)
    encoded = gs.encoded_keys(**filters)
    if codec is not None:
        return sorted(keys + encoded, key=sort_key), set(encoded), 0
    if encoded and not keys:
        specs = ", ".join(gs.variant_specs(encoded[0]))
        raise SourceError(f"{gs.path}: the {len(encoded)} keys selected are stored as encoded "
                          f"variants only ({specs}); pass --codec SPEC to export them decoded")
    return keys, set(), len(encoded)


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
           progress=None, codec=None) -> ExportReport:
    """Write the selected keys of ``store`` (a path or an open store) into directory ``to``.

    Filters are those of ``Store.keys``.  Refuses to overwrite existing files.
    ``codec`` (a spec): keys held as encoded variants only are exported too,
    decoded from this codec's variant (KeyError for one that has none).
    """
    import gradstore
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r} (use {', '.join(FORMATS)})")
    if codec is not None:
        from ..variants import codec_of
        codec = codec_of(codec)   # an unknown codec fails before anything is written
    t0 = time.monotonic()
    out = Path(to)
    report = ExportReport()
    own = isinstance(store, (str, os.PathLike))
    gs = gradstore.open(store, "r") if own else store
    try:
        keys, encoded, report.encoded_left_out = _selection(
            gs, codec, dict(rank=rank, epoch=epoch, step=step, bucket=bucket, module=module))
        if not keys:
            raise SourceError(f"{gs.path}: no key matches the selection")
        reader = _Reader(gs, encoded, codec)
        report.decoded = len(encoded)
        # every variant looked up before the first file: a key without one fails the export here
        report.lossy = any([not gs.variant_entry(k, codec).extra.get("lossless") for k in encoded])
        out.mkdir(parents=True, exist_ok=True)
        if format == "h5":
            first = out / "pack_000.h5"
            if first.exists():
                raise FileExistsError(f"{first} already exists; export into another directory")
            with h5.Pack(out, pack_size) as pack:
                for key in keys:
                    pack.add(key, reader.array(key))
                    nbytes = gs.source_entry(key).nbytes
                    report.tensors += 1
                    report.nbytes += nbytes
                    if progress:
                        progress(nbytes)
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
                tensors = reader.tensors(pairs)
                _atomic(targets[stem], lambda p, t=tensors: mod.save(p, t))
                nbytes = sum(gs.source_entry(k).nbytes for _, k in pairs)
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
