"""Checks of a snapshot's columns: a damaged or crafted snapshot must be
refused as a whole (and the index rebuilt), never served row by row.

The rules are spec/FORMAT.md's for a well-formed record (section 4), applied
to whole columns at once.
"""
from __future__ import annotations

import numpy as np

from . import dtypes
from . import format as fmt
from .forms import Forms

KINDS = (fmt.KIND_TENSOR, fmt.KIND_VARIANT)


def check_columns(cols: dict, dims: np.ndarray, n: int) -> None:
    """ValueError unless the snapshot's columns describe records a reader can serve."""
    if n == 0:
        return
    if not np.isin(cols["kind"], KINDS).all():
        raise ValueError("snapshot has an unknown record kind")
    if int(cols["dtype"].max()) >= len(dtypes.NAMES) or int(cols["ndim"].max()) > fmt.MAX_NDIM:
        raise ValueError("snapshot has an unknown dtype or too many dimensions")
    if bool((cols["time"] < 0).any()) or bool((dims >= np.uint64(2**63)).any()):
        raise ValueError("snapshot has a bad time or dimension")
    if bool((cols["offset"] % fmt.ALIGN).any()) or bool((cols["hlen"] % fmt.ALIGN).any()) \
            or bool((cols["offset"] < fmt.SEG_HEADER_SIZE).any()):
        raise ValueError("snapshot has a misaligned record")


def check_forms(forms: Forms, form_of: np.ndarray, plen: np.ndarray, extra: dict, kinds: np.ndarray) -> None:
    """ValueError unless each tensor row's payload holds exactly its shape, and
    each variant row has its codec."""
    nbytes = []
    for f in range(len(forms)):
        kind, shape, name = forms.facts(f)
        size = dtypes.ITEMSIZE[name]
        for d in shape:
            size *= d
        nbytes.append(min(size, 2**64 - 1) if kind == fmt.KIND_TENSOR else 0)
    tensor = kinds == fmt.KIND_TENSOR
    if not (np.array(nbytes, np.uint64)[form_of[tensor]] == plen[tensor]).all():
        raise ValueError("snapshot has a payload length that disagrees with its shape")
    for row in np.flatnonzero(~tensor).tolist():
        facts = extra.get(row)
        codec = facts.get("codec") if isinstance(facts, dict) else None
        if not isinstance(codec, str) or not codec:
            raise ValueError("snapshot has a variant without its codec")
