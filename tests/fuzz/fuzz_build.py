"""Small stores written through the public API, with the truth about what they hold.

A plan is a list of sessions; each session opens the store in mode "a" (main
namespace or rank 1), carries out a few writes, buckets, overwrites and
encodes, and closes. Every tensor's bytes follow from (key, version), so a
check needs only the plan to know what each key must read back as.

Where each record lies is taken from the API (the Entry that write() and
write_bucket() return, ``gs.variant_entry``), never from a hard-coded header
layout, so the suite keeps working when the record format changes.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

import gradstore
from crash_writer import content, same  # noqa: F401 - the crash tests' tensors, bit-exact compare

SEGMENT_SIZE = 4096          # the smallest the store allows: records roll over often
CODECS = ("zstd:level=1", "zlib:level=1")


# -- plans -----------------------------------------------------------------------

MAIN_KEYS = [f"R_0_E_0_S_{s}_B_{b}/m{m}" for s in range(3) for b in range(2) for m in range(3)]
MAIN_KEYS += ["plain/a", "plain/b/c"]
RANK1_KEYS = [f"R_1_E_0_S_{s}_B_0/m{m}" for s in range(2) for m in range(3)]


def _keys_of(rank):
    return RANK1_KEYS if rank == 1 else MAIN_KEYS


def draw_op(pick, rank):
    keys = _keys_of(rank)
    kind = pick.choice(["write", "write", "write", "bucket", "bucket", "encode", "embed"])
    if kind == "write":
        return ("write", pick.choice(keys))
    if kind == "bucket":
        name = pick.choice(sorted({k.split("/")[0] for k in keys if k.startswith("R_")}))
        return ("bucket", name, tuple(pick.sample(["m0", "m1", "m2"], 1, 3)))
    if kind == "encode":
        return ("encode", pick.choice(CODECS))
    return ("embed", pick.choice(keys))


def draw_plan(pick, max_sessions: int = 3, max_ops: int = 8) -> tuple:
    """Sessions (rank, checkpoint_on_close, ops): a small store's whole history."""
    sessions = []
    for _ in range(pick.integer(1, max_sessions)):
        rank = pick.choice([None, None, None, 1])
        checkpoint = pick.choice([1024, 1024, 1, 3])  # mostly: logs keep their entries
        ops = tuple(draw_op(pick, rank) for _ in range(pick.integer(1, max_ops)))
        sessions.append((rank, checkpoint, ops))
    return tuple(sessions)


@st.composite
def plans(draw, max_sessions: int = 3):
    from fuzz_pick import HypothesisPick
    return draw_plan(HypothesisPick(draw), max_sessions)


# -- building ------------------------------------------------------------------------


@dataclass
class Record:
    """One record written: its entry id, version, file (relative to the store) and byte span."""

    id: str
    version: int
    file: str
    start: int
    end: int


@dataclass
class Truth:
    """What a store must hold: every version of every entry id, newest last, and where each lies.

    Entry ids are the key for tensors and ``key + "\\0" + codec`` for variants.
    """

    versions: dict[str, list[np.ndarray]] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)

    def add(self, id_: str, value: np.ndarray, entry) -> None:
        self.versions.setdefault(id_, []).append(value)
        self.records.append(Record(id_, len(self.versions[id_]) - 1, entry.segment,
                                   entry.offset, entry.end))

    def newest(self, id_: str) -> Record:
        return [r for r in self.records if r.id == id_][-1]

    def tensor_keys(self) -> list[str]:
        return sorted(k for k in self.versions if "\0" not in k)

    def variant_ids(self) -> list[str]:
        return sorted(k for k in self.versions if "\0" in k)


@contextlib.contextmanager
def checkpoint_on_close(n: int):
    """Snapshot on close after ``n`` log entries, so small stores get snapshots with entries too."""
    from gradstore import namespace
    old = getattr(namespace, "CHECKPOINT_ON_CLOSE", None)
    if old is None:  # the knob is gone: the store's own schedule applies
        yield
        return
    namespace.CHECKPOINT_ON_CLOSE = n
    try:
        yield
    finally:
        namespace.CHECKPOINT_ON_CLOSE = old


def _next(truth: Truth, key: str) -> tuple[int, np.ndarray]:
    v = len(truth.versions.get(key, ()))
    return v, content(key, v)


def build(path: Path, plan) -> Truth:
    """Write ``plan`` into a new store at ``path``; what it must hold."""
    truth = Truth()
    for rank, checkpoint, ops in plan:
        with checkpoint_on_close(checkpoint), gradstore.open(path, "a", rank=rank,
                                                               segment_size=SEGMENT_SIZE) as gs:
            for op in ops:
                _apply(gs, path, truth, op)
    return truth


def _apply(gs, path: Path, truth: Truth, op) -> None:
    kind = op[0]
    if kind == "write":
        key = op[1]
        _v, value = _next(truth, key)
        truth.add(key, value, gs.write(key, value, overwrite=key in truth.versions))
    elif kind == "embed":
        # A tensor whose bytes hold valid records: the first segment of this store so far.
        segs = sorted(p for p in path.glob("*/data-*.bin"))
        key = op[1]
        value = np.fromfile(segs[0], dtype=np.uint8) if segs else content(key, 0)
        truth.add(key, value, gs.write(key, value, overwrite=True))
    elif kind == "bucket":
        name, mods = op[1], op[2]
        values = {m: _next(truth, f"{name}/{m}")[1] for m in mods}
        exists = any(f"{name}/{m}" in truth.versions for m in mods)
        entries = gs.write_bucket(name, values, overwrite=exists or len(mods) > 2)
        for m, e in zip(mods, entries):
            assert e.key == f"{name}/{m}"
            truth.add(e.key, values[m], e)
    elif kind == "encode":
        spec = op[1]
        res = gs.encode(spec, progress=False)
        for key in res.written:
            e = gs.variant_entry(key, spec)
            truth.add(f"{key}\0{spec}", truth.versions[key][-1], e)
    else:
        raise ValueError(f"unknown op {op!r}")


def store_files(path: Path) -> list[str]:
    """Every file of the store but the writer locks, relative to ``path``, sorted."""
    out = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name != "LOCK":
                out.append(os.path.relpath(os.path.join(root, name), path))
    return sorted(out)
