"""gradstore: store and study the gradients captured while training LLMs with DDP.

    import gradstore
    with gradstore.open("run.gs", "a") as gs:
        gs.write("R_0_E_0_S_5_B_3/model.layers.0.mlp.up_proj.weight", array)
    gs = gradstore.open("run.gs")
    view = gs["R_0_E_0_S_5_B_3/model.layers.0.mlp.up_proj.weight"]

The names below the errors load on first use, so that ``import gradstore``
costs nothing until the store is used (and a command's Ctrl-C is caught
while numpy loads, see entry.py).
"""
from __future__ import annotations

import importlib

from .errors import (ChecksumError, CodecError, FormatError, GradstoreError, KeyExistsError,
                     LockedError, NotEncodableError, ReadOnlyError, UnknownCodecError, WriteError)

__version__ = "0.1.0"

_LAZY = {
    "open": ("store", "open_store"), "Store": ("store", "Store"), "checksum": ("store", "checksum"),
    "Entry": ("index", "Entry"), "Key": ("keys", "Key"), "Problem": ("namespace", "Problem"),
    "repair": ("maintenance", "repair"), "compact": ("maintenance", "compact"),
    "parse_size": ("marker", "parse_size"),
}

__all__ = [
    "open", "Store", "Key", "Entry", "Problem", "checksum", "repair", "compact", "parse_size",
    "GradstoreError", "FormatError", "ChecksumError", "LockedError", "ReadOnlyError",
    "KeyExistsError", "WriteError", "CodecError", "UnknownCodecError", "NotEncodableError", "__version__",
]


def __getattr__(name: str):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'gradstore' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
