"""Keys of tensors read from per-bucket files (.pt, .safetensors), and back.

A file ``R_0_E_1_S_5_B_3.pt`` holding ``{"model.x.weight": t}`` gives the key
``R_0_E_1_S_5_B_3/model.x.weight``.  The bucket name may sit inside a longer
file name (``grads-R_00_E_1_S_5_B_3.pt``); it is then taken out and written
without leading zeros, as structured keys require.  A file whose name holds
no bucket name gives keys under its stem.  A tensor with an empty name (a file that holds a
single tensor) is stored under the prefix alone.  ``split`` is the inverse
that export uses, so exported files convert back to the same keys.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..keys import bucket_name, check_key

_BUCKET_IN_NAME = re.compile(r"(?<![A-Za-z0-9])R_(\d+)_E_(\d+)_S_(\d+)_B_(\d+)(?![A-Za-z0-9])")


def prefix_of(path: str | os.PathLike) -> str:
    """The key prefix of a file: the bucket name in its stem, else the stem."""
    stem = Path(path).stem
    found = _BUCKET_IN_NAME.findall(stem)
    if len(found) == 1:
        return bucket_name(*(int(n) for n in found[0]))
    return stem


def join(prefix: str, name: str) -> str:
    """The key of tensor ``name`` in a file with ``prefix``; ValueError if not storable."""
    return check_key(f"{prefix}/{name}" if name else prefix)


def split(key: str) -> tuple[str, str]:
    """(file stem, tensor name) of a key: the inverse of ``join``.

    Raises ValueError when the stem would not be a safe file name.
    """
    prefix, _, name = key.partition("/")
    if prefix in (".", "..") or prefix.startswith(".") or os.sep in prefix or "\\" in prefix:
        raise ValueError(f"key {key!r}: {prefix!r} cannot be a file name")
    return prefix, name
