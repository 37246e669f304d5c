"""Keys stored as encoded variants only: no tensor record, one variant record per codec.

A run that wants, say, only the ``eg`` variants of its gradients writes
them with ``Store.write_encoded`` (``GradientCapture(..., raw=False)``).
Each variant record is what ``Store.encode`` would have written next to
the tensor, its ``src`` the checksum the tensor's own record would carry
(spec/FORMAT.md, section 4): the index, recovery, verify and compaction
treat it as any variant. What differs is reading: such a key is not among
``keys()`` and ``gs[key]`` has nothing to map; ``encoded_keys()`` lists
them and ``variant(key, spec)`` decodes one. A tensor that none of the
codecs can represent (NaN, Inf, out of range) is stored as a tensor
instead, so nothing handed to the store is lost.

Reports include them (``source_entry``): the raw baseline is the record
the tensor would have taken, the codecs stored give their recorded sizes,
and any other codec has no tensor to encode and says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import dtypes
from . import format as fmt
from .index import Entry
from .store import checksum
from .variants import codec_of, coded_variants

NO_TENSOR = -1   # the seq of a source entry that stands for a tensor not stored


class _Source(NamedTuple):
    """What variant_meta needs of the tensor a variant encodes."""

    dtype: str
    shape: tuple
    checksum: int


@dataclass
class EncodedWrite:
    """What ``Store.write_encoded`` did with one bucket."""

    written: dict[str, list[str]] = field(default_factory=dict)   # codec spec -> keys
    failed: dict[str, dict[str, str]] = field(default_factory=dict)   # spec -> {key: reason}
    raw: list[str] = field(default_factory=list)   # no codec could: stored as tensors

    def __str__(self) -> str:
        coded = ", ".join(f"{spec}: {len(keys)}" for spec, keys in self.written.items())
        return f"encoded only ({coded}); {len(self.raw)} stored as tensors (no codec could)"


def codecs_of(specs) -> list:
    """The codecs a variants-only write stores: at least one, and not ``raw`` (ValueError)."""
    codecs = [codec_of(c) for c in ([specs] if isinstance(specs, str) else specs)]
    if not codecs or any(c.spec == "raw" for c in codecs):
        raise ValueError("storing variants only needs at least one codec, and not 'raw' "
                         "(to store the tensors, use write_bucket)")
    return codecs


def write(store, ns, prepared: list[tuple[str, np.ndarray]], codecs: list) -> EncodedWrite:
    """Write ``codecs``' variants of each (key, array) in one run; tensors none can code, in another."""
    items, written, failed = coded_variants(codecs, [
        (key, arr, _Source(dtypes.name_of(arr.dtype), tuple(arr.shape), checksum(arr)))
        for key, arr in prepared])
    result = EncodedWrite(written, failed)
    coded = {key for keys in written.values() for key in keys}
    raw = [(key, arr) for key, arr in prepared if key not in coded]
    if items:
        ns.append_many(fmt.KIND_VARIANT, items)
    if raw:
        store._append(ns, raw)
        result.raw = [key for key, _ in raw]
    return result


def catalog(store) -> dict[str, list[str]]:
    """{key: codec specs} of the keys with variants and no tensor.

    One pass over the variant ids, kept until a namespace's index changes
    (a record appended anywhere raises its greatest record number; a refresh
    may replace it), so a report over many such keys does not scan them all
    once per key.
    """
    token = tuple((name, id(ns.index), ns.index.last_n) for name, ns in store._namespaces.items())
    cached = getattr(store, "_encoded_catalog", None)
    if cached is not None and cached[0] == token:
        return cached[1]
    tensors = store._all_keys()
    tensors = tensors if isinstance(tensors, dict) else set(tensors)
    found: dict[str, list[str]] = {}
    for ns in store._namespaces.values():
        for id_ in ns.index.ids(fmt.KIND_VARIANT):
            key, _, spec = id_.partition("\0")
            if key not in tensors:
                found.setdefault(key, []).append(spec)
    for specs in found.values():
        specs.sort()
    store._encoded_catalog = (token, found)
    return found


def keys(store) -> list[str]:
    """Keys with variants and no tensor, unsorted."""
    return list(catalog(store))


def newest_variant(store, key: str) -> Entry | None:
    """The newest variant entry of an encoded-only ``key`` (any codec), or None."""
    best = None
    for spec in catalog(store).get(key, ()):
        e = store._find(fmt.KIND_VARIANT, f"{key}\0{spec}")
        if e is not None and (best is None or e.time > best.time):
            best = e
    return best


def source_entry(store, key: str) -> Entry:
    """A tensor entry standing for the tensor of an encoded-only key: its dtype, shape and
    checksum, and the header and payload lengths its record would have (seq NO_TENSOR)."""
    v = newest_variant(store, key)
    if v is None:
        raise KeyError(f"no such key in {store.path}: {key!r}")
    meta = {"key": key, "dtype": v.dtype, "shape": list(v.shape), "time": v.time}
    return Entry(fmt.KIND_TENSOR, key, NO_TENSOR, 0, fmt.record_header_len(fmt.pack_meta(meta)),
                 math.prod(v.shape) * dtypes.ITEMSIZE[v.dtype], v.dtype, tuple(v.shape),
                 v.extra["src"], v.time, None, v.ns, 0)
