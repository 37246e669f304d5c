"""gradstore: store and study the gradients captured while training LLMs with DDP.

    import gradstore
    with gradstore.open("run.gs", "a") as gs:
        gs.write("R_0_E_0_S_5_B_3/model.layers.0.mlp.up_proj.weight", array)
    gs = gradstore.open("run.gs")
    view = gs["R_0_E_0_S_5_B_3/model.layers.0.mlp.up_proj.weight"]
"""
from .errors import (ChecksumError, CodecError, FormatError, GradstoreError, KeyExistsError,
                     LockedError, NotEncodableError, ReadOnlyError, UnknownCodecError, WriteError)
from .index import Entry
from .keys import Key
from .namespace import Problem
from .maintenance import compact, repair
from .marker import parse_size
from .store import Store, checksum, open_store as open

__version__ = "0.1.0"

__all__ = [
    "open", "Store", "Key", "Entry", "Problem", "checksum", "repair", "compact", "parse_size",
    "GradstoreError", "FormatError", "ChecksumError", "LockedError", "ReadOnlyError",
    "KeyExistsError", "WriteError", "CodecError", "UnknownCodecError", "NotEncodableError", "__version__",
]
