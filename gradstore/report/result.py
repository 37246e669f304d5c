"""One key through one codec: the unit of work of a report, and what a results file keeps.

Every report (serial, ``-j N`` or on Dask) measures each (key, codec) once
and produces a ``KeyResult``; rows per group, the CSV, the terminal summary,
the plots and resuming a stopped report all start from these.  ``codec`` is
the canonical spec, or ``"raw"`` for the baseline (the tensor as stored).

Sizes come from payloads that really decode (see variants.trial): ``nbits``
is the codec's body in bits, ``payload`` its bytes, ``disk`` the bytes the
record would take in a store (header and padding included).  For ``raw``,
nbits = 8 * raw_bytes, payload = raw_bytes, disk = raw_disk and entropy is
unknown.  ``failed`` holds the reason when the codec cannot represent the
tensor (NaN, Inf, out of range); the size fields are then 0.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class KeyResult:
    key: str
    codec: str                       # canonical spec, or "raw"
    src: int                         # checksum of the raw record measured (resume checks it)
    dtype: str
    elements: int
    raw_bytes: int                   # the tensor's payload bytes
    raw_disk: int                    # its record's bytes on disk
    nbits: int = 0
    payload: int = 0
    disk: int = 0
    entropy_bits: float | None = None   # order-0 entropy of the coded symbols, in bits
    lossless: bool = True
    max_abs: float = 0.0             # lossy codecs: largest absolute error
    sq_err: float = 0.0              # sum of squared errors, and of squared values,
    sq_ref: float = 0.0              # so that groups get their relative L2 error
    failed: str | None = None        # not encodable: why

    def to_dict(self) -> dict:
        return dict(vars(self))   # every field is a scalar: no deep copy (asdict) needed

    @classmethod
    def from_dict(cls, d: dict) -> "KeyResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
