"""One model per group of quantized values: what eg spends on it, against the entropy.

A "model" is what a coder decides from one histogram: the order k (for
k=auto) and, with remap=rank, the rank table.  Every size here comes from
the eg codec's own planner (``plan.make_plan``) run on the group's
histogram, so a group's bits are exactly what ``EGCodec.encode`` writes for
the group's values coded as one array: codewords plus rank table
(``Encoded.nbits``), the 40-byte payload header not counted.

Histograms of several tensors are added with :class:`Counts`, which keeps
(distinct values, counts), never the values: a group spanning a whole store
costs memory in its distinct values only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...codecs.eg.plan import Histogram, make_plan
from ...codecs.stats import entropy_bits
from ..groups import ExactSum

# The eg codings compared, each (name, k, remap): one model each per group.
VARIANTS = (("k=0", 0, False), ("k=0,rank", 0, True), ("k=auto", "auto", False),
            ("k=auto,rank", "auto", True))

@dataclass
class Cost:
    """What a set of models spends, added up: elements, entropy and bits of each variant."""

    models: int = 0
    elements: int = 0
    entropy: ExactSum = field(default_factory=ExactSum)      # sum of n * H(model), bits
    bits: list[int] = field(default_factory=lambda: [0] * len(VARIANTS))        # as Encoded.nbits
    table_bits: list[int] = field(default_factory=lambda: [0] * len(VARIANTS))  # of which rank tables

    def add(self, other: Cost) -> None:
        """Add ``other``'s models; exact, so the order of the additions does not matter."""
        self.models += other.models
        self.elements += other.elements
        for x in other.entropy.partials:
            self.entropy.add(x)
        self.entropy.special += other.entropy.special
        self.bits = [a + b for a, b in zip(self.bits, other.bits)]
        self.table_bits = [a + b for a, b in zip(self.table_bits, other.table_bits)]

    def per_element(self, i: int) -> float | None:
        """Bits per element of variant ``i``."""
        return self.bits[i] / self.elements if self.elements else None

    @property
    def entropy_per_element(self) -> float | None:
        return self.entropy.value / self.elements if self.elements else None


def model_cost(keys: np.ndarray, counts: np.ndarray, sign: int) -> Cost:
    """The cost of one model of the quantized values ``keys`` (distinct, ascending) that
    occur ``counts`` times, coded with sign mode ``sign`` (an index of codec.SIGNS)."""
    hist = Histogram(keys, counts)
    cost = Cost(models=1, elements=int(counts.sum()))
    cost.entropy.add(entropy_bits(counts))
    for i, (_, k, remap) in enumerate(VARIANTS):
        plan = make_plan(hist, k=k, sign=sign, remap=remap, runs=False, codes=False)
        cost.bits[i], cost.table_bits[i] = plan.nbits, plan.table_bits
    return cost


class Counts:
    """A histogram of quantized values added up from parts, in memory bounded by its
    distinct values: parts are folded in once they outgrow what is already held."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending = 0
        self._size = 0

    def add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Add the histogram (distinct ``keys``, ascending; their ``counts``)."""
        if keys.size:
            self._parts.append((keys, counts))
            self._pending += keys.size
            if self._pending > max(self._size, 1 << 16):
                self.fold()

    def fold(self) -> tuple[np.ndarray, np.ndarray]:
        """The sum so far, as (distinct values ascending, int64 counts)."""
        parts = self._parts
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if len(parts) > 1:
            keys = np.concatenate([k for k, _ in parts])
            counts = np.concatenate([c for _, c in parts]).astype(np.int64, copy=False)
            order = np.argsort(keys, kind="stable")    # ascending runs: merged, not sorted
            keys, counts = keys[order], counts[order]
            starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
            parts[:] = [(keys[starts], np.add.reduceat(counts, starts))]
        self._size, self._pending = parts[0][0].size, 0
        return parts[0]
