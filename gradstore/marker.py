"""The store marker file GRADSTORE (spec section 2) and the sizes it records."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from . import format as fmt
from .errors import FormatError
from .fileio import fsync_dir

NAMESPACE_RE = re.compile(r"main|r(0|[1-9][0-9]*)")
DEFAULT_SEGMENT_SIZE = 1 << 30  # 1 GiB: large sequential files, cheap to compact
_SIZE_RE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kmgtp]?i?b?)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "p": 10**15, "pb": 10**15, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40, "pib": 2**50}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as ``"1.8TB"``, ``"512MiB"`` or ``"4096"``."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = _SIZE_RE.fullmatch(str(size))
        unit = (m.group(2) or "").lower() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(f"bad size {size!r} (use bytes or e.g. 512MB, 4GiB, 1.8TB)")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value < 4096:
        raise ValueError(f"segment size {size!r} is too small (minimum 4096 bytes)")
    return value



def open_marker(path: Path, mode: str, segment_size) -> dict:
    marker = path / fmt.MARKER
    if mode == "x" and path.exists():
        raise FileExistsError(f"{path}: already exists (mode 'x')")
    if not marker.exists():
        if mode == "r":
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such store")
            raise FormatError(f"{path}: not a gradstore store (no {fmt.MARKER} file)")
        _create_marker(path, marker, segment_size)
    try:
        meta = json.loads(marker.read_text())
    except (ValueError, UnicodeDecodeError):
        raise FormatError(f"{marker}: damaged store marker") from None
    if not isinstance(meta, dict) or meta.get("format") != "gradstore":
        raise FormatError(f"{marker}: not a gradstore store marker")
    if meta.get("version") not in fmt.VERSIONS:
        raise FormatError(f"{marker}: format version {meta.get('version')}, "
                          f"this gradstore reads {', '.join(map(str, fmt.VERSIONS))}")
    if mode != "r" and meta["version"] != fmt.VERSION:
        meta["version"] = fmt.VERSION  # a writer adds records of its version: say so first
        _replace_marker(path, marker, meta)
    meta.setdefault("segment_size", DEFAULT_SEGMENT_SIZE)
    return meta


def _replace_marker(path: Path, marker: Path, meta: dict) -> None:
    tmp = path / f"{fmt.MARKER}.tmp.{os.getpid()}.{time.time_ns()}"
    try:
        _write_durably(tmp, meta)
        os.replace(tmp, marker)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path)


def _write_durably(tmp: Path, meta: dict) -> None:
    tmp.write_text(json.dumps(meta) + "\n")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())

def _create_marker(path: Path, marker: Path, segment_size) -> None:
    """Create the store marker; safe when several ranks create the store at once.

    Each writer links its own complete temporary file into place; the
    first link wins and the others read the winner's marker.
    """
    if path.exists():
        # The marker itself may have appeared since we looked: another rank
        # creating the same store at the same moment.
        foreign = [n for n in os.listdir(path)
                   if not (n == fmt.MARKER or n.startswith(fmt.MARKER + ".tmp") or NAMESPACE_RE.fullmatch(n))]
        if foreign:
            raise FormatError(f"{path}: exists and is not a gradstore store")
    size = parse_size(segment_size) if segment_size is not None else DEFAULT_SEGMENT_SIZE
    meta = {"format": "gradstore", "version": fmt.VERSION, "segment_size": size}
    created = not path.exists()
    tmp = path / f"{fmt.MARKER}.tmp.{os.getpid()}.{time.time_ns()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        try:
            _write_durably(tmp, meta)
            try:
                os.link(tmp, marker)
            except FileExistsError:
                pass  # another writer created the store first; use its marker
        finally:
            tmp.unlink(missing_ok=True)
    except BaseException:
        # Interrupted (Ctrl-C, disk full) before the marker was in place: leave
        # no directory that looks like a store but is none.
        if created:
            try:
                path.rmdir()
            except OSError:
                pass  # not empty: another rank is creating the same store
        raise
    fsync_dir(path)
