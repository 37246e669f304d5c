"""One choice interface for hypothesis and for plain ``random``.

The drawing code of the suite (plans, mutations) takes a Pick, so the
property tests (hypothesis: shrinking, reproducible examples) and
tools/torture.py (a seeded random.Random, for minutes) make the same kinds
of stores and damage.
"""
from __future__ import annotations

import random

from hypothesis import strategies as st


class RandomPick:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, seq):
        return self.rng.choice(list(seq))

    def sample(self, seq, lo: int, hi: int) -> list:
        return self.rng.sample(list(seq), self.rng.randint(lo, min(hi, len(seq))))

    def binary(self, n: int) -> bytes:
        return self.rng.randbytes(n)


class HypothesisPick:
    """Choices drawn from a hypothesis ``draw`` (st.composite or st.data().draw)."""

    def __init__(self, draw):
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, seq):
        return self.draw(st.sampled_from(list(seq)))

    def sample(self, seq, lo: int, hi: int) -> list:
        return self.draw(st.lists(st.sampled_from(list(seq)), min_size=lo, max_size=hi, unique=True))

    def binary(self, n: int) -> bytes:
        return self.draw(st.binary(min_size=n, max_size=n))
