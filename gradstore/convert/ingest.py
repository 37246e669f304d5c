"""The writer's side: store a batch, or skip it when the store already holds it.

A tensor counts as converted only when the checksum of its source bytes
equals the checksum the store recorded.  A key the store holds with other
data is a collision: reported, never overwritten.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import GradstoreError
from ..store import checksum
from . import transfer
from .source import SourceError, one_line
from .transfer import Batch, Ref


@dataclass
class Outcome:
    written: int = 0
    present: int = 0
    nbytes: int = 0
    refs: dict[str, Ref] = field(default_factory=dict)


def _describe(dtype: str, shape: tuple, checksum: int) -> str:
    return f"{dtype}{list(shape)} xxh3={checksum:016x}"


def matches(entry, dtype: str, shape: tuple, checksum: int) -> bool:
    """True when a store entry holds exactly these bytes."""
    return entry.checksum == checksum and entry.dtype == dtype and tuple(entry.shape) == tuple(shape)


def ingest(gs, batch: Batch, path: str) -> Outcome:
    """Write the tensors of ``batch`` that the store lacks; SourceError on a collision.

    Keys are all checked before anything is written, so a part with a
    collision writes nothing.  The spool file is deleted in every case.
    """
    out = Outcome()
    with transfer.unpack(batch) as tensors:
        todo = []
        for ref, arr in tensors:
            if ref.key in out.refs:
                raise SourceError(f"{path}: key collision: {ref.key} occurs twice in this file")
            out.refs[ref.key] = ref
            if ref.key in gs:
                e = gs.entry(ref.key)
                if not matches(e, ref.dtype, ref.shape, ref.checksum):
                    raise SourceError(
                        f"{path}: key collision: {ref.key} is in the store with other data "
                        f"(store {_describe(e.dtype, e.shape, e.checksum)}, "
                        f"source {_describe(ref.dtype, ref.shape, ref.checksum)}); not overwritten")
                out.present += 1
            else:
                todo.append((ref, arr))
        for ref, arr in todo:
            if ref.in_source:   # read again from the source file: it may have changed since
                now = checksum(arr)
                if now != ref.checksum:
                    raise SourceError(
                        f"{path}: {ref.key} changed after it was read (xxh3 {ref.checksum:016x} "
                        f"then, {now:016x} now); not stored")
            try:
                e = gs.write(ref.key, arr)
            except GradstoreError as exc:
                raise SourceError(f"{path}: cannot store {ref.key}: {one_line(exc)}") from None
            if not matches(e, ref.dtype, ref.shape, ref.checksum):
                raise SourceError(
                    f"{path}: verification failed for {ref.key}: the store recorded "
                    f"{_describe(e.dtype, e.shape, e.checksum)}, the source read "
                    f"{_describe(ref.dtype, ref.shape, ref.checksum)}")
            out.written += 1
            out.nbytes += ref.nbytes
    return out
