"""Damage to a store's files, and the byte ranges each one touched.

A Mutation is plain data (file, kind, offset, ...) with a one-line ``str``
that reads as a reproduction step. ``apply`` changes the file and returns the
ranges it touched, so a check knows which records may be lost and which must
survive.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from fuzz_build import Truth

WHOLE = 1 << 62  # "to the end of the file", for deletions and truncations


def file_class(rel: str) -> str:
    """"segment", "index" or "marker" for a store file (relative path)."""
    name = rel.rsplit("/", 1)[-1]
    if name == "GRADSTORE":
        return "marker"
    if name.endswith(".bin"):
        return "segment"
    if name.startswith("index"):
        return "index"
    return "other"


@dataclass(frozen=True)
class Mutation:
    file: str            # relative to the store
    kind: str            # flip, overwrite, truncate, delete
    offset: int = 0      # flip/overwrite: where; truncate: the new size
    bit: int = 0         # flip: which bit of the byte
    data: bytes = b""    # overwrite: the bytes written

    def __str__(self) -> str:
        if self.kind == "flip":
            return f"flip bit {self.bit} of byte {self.offset} of {self.file}"
        if self.kind == "overwrite":
            shown = self.data.hex() if len(self.data) <= 8 else f"{self.data[:8].hex()}..."
            return f"overwrite {len(self.data)} bytes at {self.offset} of {self.file} with {shown}"
        if self.kind == "truncate":
            return f"truncate {self.file} to {self.offset} bytes"
        return f"delete {self.file}"

    def apply(self, root: Path) -> tuple[str, int, int]:
        """Damage the file under ``root``; the (file, start, end) range touched."""
        path = root / self.file
        if self.kind == "delete":
            path.unlink()
            return self.file, 0, WHOLE
        if self.kind == "truncate":
            os.truncate(path, self.offset)
            return self.file, self.offset, WHOLE
        with open(path, "r+b") as f:
            if self.kind == "flip":
                f.seek(self.offset)
                b = f.read(1)[0] ^ (1 << self.bit)
                f.seek(self.offset)
                f.write(bytes([b]))
                return self.file, self.offset, self.offset + 1
            f.seek(self.offset)
            f.write(self.data)
            return self.file, self.offset, self.offset + len(self.data)


def touched_ids(truth: Truth, ranges: list[tuple[str, int, int]]) -> set[str]:
    """Entry ids whose newest record overlaps a touched range."""
    out = set()
    for id_ in truth.versions:
        r = truth.newest(id_)
        if any(f == r.file and s < r.end and r.start < e for f, s, e in ranges):
            out.add(id_)
    return out


# -- drawing a mutation for a built store ---------------------------------------------


def log_frames(data: bytes, start: int = 16) -> list[int]:
    """Where the entries of an index log seem to start (spec section 5 framing: u32 length,
    u64 checksum, body). Only a hint for where damage hurts most: unparsable logs give []."""
    out, pos = [], start
    while pos + 12 <= len(data) and len(out) < 10_000:
        out.append(pos)
        pos += 12 + int.from_bytes(data[pos:pos + 4], "little")
    return out


def _offsets(pick, root: Path, rel: str, size: int, truth: Truth) -> int:
    """An offset in [0, size): anywhere, or where the file's structure is (headers, records,
    log entries)."""
    spots = [0, max(0, size - 1)]
    for r in truth.records:
        if r.file == rel:
            spots += [r.start, min(r.end, size) - 1]
    if rel.endswith(".log"):
        spots += log_frames((root / rel).read_bytes())
    where = pick.choice(["any", "field", "field", "near", "tail"])
    if where == "any":
        return pick.integer(0, size - 1)
    if where == "tail":
        return pick.integer(max(0, size - 80), size - 1)
    base = pick.choice(sorted(set(s for s in spots if 0 <= s < size)))
    shift = pick.integer(0, 11) if where == "field" else pick.integer(-4, 48)
    return min(size - 1, max(0, base + shift))


KINDS = ("flip", "flip", "overwrite", "truncate", "truncate", "delete")


def damageable(root: Path, classes: tuple[str, ...]) -> list[str]:
    """The files of ``root`` in ``classes``; those holding more than a header first."""
    from fuzz_build import store_files
    files = [f for f in store_files(root) if file_class(f) in classes]
    sizes = {f: (root / f).stat().st_size for f in files}
    return sorted(files, key=lambda f: (sizes[f] <= 64, f))


def draw_mutation(pick, root: Path, truth: Truth, classes: tuple[str, ...],
                  kinds: tuple[str, ...] = KINDS) -> Mutation | None:
    """One mutation of a file of ``root`` whose class is in ``classes`` (None: no such file)."""
    files = damageable(root, classes)
    if not files:
        return None
    rel = pick.choice(files)
    size = (root / rel).stat().st_size
    kind = pick.choice(kinds if size else [k for k in kinds if k == "delete"] or ["truncate"])
    if kind == "delete":
        return Mutation(rel, "delete")
    if size == 0:
        return Mutation(rel, "truncate", 0)
    offset = _offsets(pick, root, rel, size, truth)
    if kind == "flip":
        return Mutation(rel, "flip", offset, bit=pick.integer(0, 7))
    if kind == "truncate":
        return Mutation(rel, "truncate", offset)
    n = pick.integer(1, 64)
    fill = pick.choice(["zero", "ones", "random"])
    data = bytes(n) if fill == "zero" else b"\xff" * n if fill == "ones" else pick.binary(n)
    return Mutation(rel, "overwrite", offset, data=data)


@st.composite
def mutations(draw, root: Path, truth: Truth, classes: tuple[str, ...]):
    from fuzz_pick import HypothesisPick
    return draw_mutation(HypothesisPick(draw), root, truth, classes)
