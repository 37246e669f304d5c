"""Whole-store maintenance: facts for ``info``, and repair and compaction by path."""
from __future__ import annotations

import os
from pathlib import Path

from . import format as fmt
from .keys import try_parse
from .namespace import Namespace, Problem
from .segment import list_segments
from .store import Store


def info(store) -> dict:
    """Counts and sizes, as ``gradstore info`` prints them."""
    by_dtype: dict[str, int] = {}
    raw = 0
    nvariants = 0
    for ns in store._namespaces.values():
        for e in ns.index.entries(fmt.KIND_TENSOR):
            by_dtype[e.dtype] = by_dtype.get(e.dtype, 0) + 1
            raw += e.payload_len
        nvariants += len(ns.index.ids(fmt.KIND_VARIANT))
    segments = {name: {fmt.STREAM_NAMES[s]: len(list_segments_of(ns, s)) for s in (1, 2)}
                for name, ns in store._namespaces.items()}
    keys = store._all_keys()
    from .encoded import keys as encoded_keys
    encoded = encoded_keys(store) if nvariants else []
    parsed = [k for k in (try_parse(x) for x in [*keys, *encoded]) if k is not None]
    return {
        "path": str(store.path),
        "keys": len(keys),
        "encoded_only": len(encoded),
        "variants": nvariants,
        "buckets": len({k.bucket_name for k in parsed}),
        "ranks": sorted({k.rank for k in parsed}),
        "epochs": sorted({k.epoch for k in parsed}),
        "steps": (min(k.step for k in parsed), max(k.step for k in parsed)) if parsed else None,
        "dtypes": dict(sorted(by_dtype.items())),
        "tensor_bytes": raw,
        "disk_bytes": sum(ns.disk_bytes() for ns in store._namespaces.values()),
        "namespaces": segments,
        "segment_size": store.segment_size,
    }


def list_segments_of(ns: Namespace, stream: int) -> list[int]:
    return list_segments(ns.dir, stream) if ns.dir.exists() else []


class Repaired(dict):
    """Entries per namespace after a repair; ``lost`` names the newest
    versions the old index knew of that no longer check out (damaged or
    missing): they stay named, and verify() reports them, until rewritten."""

    lost: list[Problem]


def repair(path: str | os.PathLike) -> Repaired:
    """Rebuild every namespace's index from its segments. Returns entries per namespace."""
    store = Store(path, "r")
    try:
        names = store._namespace_names()
        segment_size = store.segment_size
    finally:
        store.close()
    out = Repaired()
    out.lost = []
    for name in names:
        ns = Namespace(Path(path), name)
        ns._lock()
        try:
            out[name] = ns.rebuild(segment_size, fsync=True)
            out.lost += [Problem(e.key if e.kind == fmt.KIND_TENSOR else e.id.replace("\0", " variant "),
                                 e.segment, e.offset, "newest version damaged or missing") for e in ns.lost]
        finally:
            ns.close()
    return out


def compact(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Compact every namespace; each must be free of writers."""
    with Store(path, "r") as store:
        names = store._namespace_names()
    out = {}
    for name in names:
        rank = None if name == "main" else int(name[1:])
        with Store(path, "a", rank=rank) as st:
            out[name] = st.compact()
    return out
