"""KeyResults -> rows: one row per (group, codec), the raw baseline first.

Results arrive in any order (worker processes, a Dask cluster, a resumed
run reading them back), so the sums must not depend on it: integers are
exact anyway, and the float sums (entropy, squared errors) are kept as
exact partial sums (Shewchuk's algorithm, as math.fsum) and rounded once.
A report is thus identical, bit for bit, however it was run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..keys import try_parse
from .result import KeyResult

GROUP_FIELDS = ("rank", "epoch", "step", "bucket", "module")
PLAIN_GROUP = "(plain keys)"
TOTAL = "(all)"          # the accumulators over every key, next to the groups


class ExactSum:
    """A float sum whose value does not depend on the order of the terms."""

    __slots__ = ("partials", "special")

    def __init__(self) -> None:
        self.partials: list[float] = []
        self.special = 0.0      # inf and nan, which exact partials cannot hold

    def add(self, x: float) -> None:
        if not math.isfinite(x):
            self.special += x
            return
        partials = self.partials
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]

    @property
    def value(self) -> float:
        total = math.fsum(self.partials)
        return total + self.special if self.special else total


@dataclass
class Acc:
    """What one (group, codec) adds up to."""

    keys: int = 0
    not_encodable: int = 0
    elements: int = 0
    raw_bytes: int = 0
    raw_disk: int = 0
    bits: int = 0
    payload: int = 0
    disk: int = 0
    entropy: ExactSum = field(default_factory=ExactSum)
    entropy_known: bool = True
    max_abs: float = 0.0
    sq_err: ExactSum = field(default_factory=ExactSum)
    sq_ref: ExactSum = field(default_factory=ExactSum)
    lossless: bool = True
    dtypes: set = field(default_factory=set)

    def add(self, r: KeyResult) -> None:
        if r.failed is not None:
            self.not_encodable += 1
            return
        self.keys += 1
        self.elements += r.elements
        self.raw_bytes += r.raw_bytes
        self.raw_disk += r.raw_disk
        self.dtypes.add(r.dtype)
        self.bits += r.nbits
        self.payload += r.payload
        self.disk += r.disk
        if r.entropy_bits is None:
            self.entropy_known = False
        else:
            self.entropy.add(r.entropy_bits)
        if not r.lossless:
            self.lossless = False
            self.max_abs = max(self.max_abs, r.max_abs)
            self.sq_err.add(r.sq_err)
            self.sq_ref.add(r.sq_ref)


def check_group_by(group_by) -> tuple[str, ...]:
    """``group_by`` as a tuple of field names (a comma string works too); ValueError if unknown."""
    if isinstance(group_by, str):
        group_by = tuple(g for g in group_by.split(",") if g)
    group_by = tuple(group_by)
    bad = [g for g in group_by if g not in GROUP_FIELDS]
    if bad:
        raise ValueError(f"cannot group by {', '.join(bad)}; choose from {', '.join(GROUP_FIELDS)}")
    return group_by


def group_of(key: str, group_by: tuple[str, ...]) -> str:
    """The row a key counts in: the key itself without ``group_by``."""
    if not group_by:
        return key
    parsed = try_parse(key)
    if parsed is None:
        return PLAIN_GROUP
    return ",".join(f"{g}={getattr(parsed, g)}" for g in group_by)


class Groups:
    """Accumulators per (group, codec); rows come out in the order the groups were declared."""

    def __init__(self, group_by: tuple[str, ...], specs: list[str]):
        self.group_by = group_by
        self.specs = ["raw"] + [s for s in specs if s != "raw"]
        self.order: dict[str, None] = {}
        self.accs: dict[tuple[str, str], Acc] = {}
        self._group: dict[str, str] = {}   # key -> its group, parsed once per key

    def declare(self, key: str) -> None:
        """Keys in report order: their groups' first appearance fixes the row order."""
        g = self._group[key] = group_of(key, self.group_by)
        self.order.setdefault(g, None)

    def add(self, r: KeyResult) -> None:
        g = self._group.get(r.key)
        for g in (group_of(r.key, self.group_by) if g is None else g, TOTAL):
            acc = self.accs.get((g, r.codec))
            if acc is None:
                acc = self.accs[(g, r.codec)] = Acc()
            acc.add(r)

    def rows(self) -> list[dict]:
        return [row(g, spec, self.accs.get((g, spec)) or Acc())
                for g in self.order for spec in self.specs]

    def totals(self) -> list[dict]:
        """One row per codec over every key of the report (group "(all)")."""
        return [row(TOTAL, spec, self.accs.get((TOTAL, spec)) or Acc()) for spec in self.specs]


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def row(group: str, spec: str, a: Acc) -> dict:
    """The report row of one accumulator; these column names are the CSV's."""
    ratio_theory = _ratio(a.bits, 8 * a.raw_bytes)
    ratio_os = _ratio(a.disk, a.raw_disk)
    bpe = _ratio(a.bits, a.elements)
    h = _ratio(a.entropy.value, a.elements) if a.entropy_known and a.keys else None
    rel_l2 = None
    if not a.lossless:
        sq_err, sq_ref = a.sq_err.value, a.sq_ref.value
        rel_l2 = (sq_err / sq_ref) ** 0.5 if sq_ref else (0.0 if not sq_err else float("inf"))
    return {
        "group": group, "codec": spec, "keys": a.keys, "not_encodable": a.not_encodable,
        "elements": a.elements, "dtype": ",".join(sorted(a.dtypes)), "raw_bytes": a.raw_bytes,
        "bits": a.bits, "payload_bytes": a.payload, "disk_bytes": a.disk,
        "ratio_theory": ratio_theory, "saving_theory": None if ratio_theory is None else 1 - ratio_theory,
        "ratio_os": ratio_os, "saving_os": None if ratio_os is None else 1 - ratio_os,
        "bits_per_element": bpe, "entropy_per_element": h,
        "efficiency": _ratio(h, bpe) if h is not None and bpe else None,
        "lossless": a.lossless, "max_abs_err": None if a.lossless else a.max_abs,
        "rel_l2_err": rel_l2,
    }
