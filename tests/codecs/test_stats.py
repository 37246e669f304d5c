"""Order-0 entropy helpers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gradstore.codecs.stats import byte_entropy_bits, entropy_bits, int_entropy_bits, symbol_counts


def test_entropy_of_known_distributions():
    assert entropy_bits([5, 5, 5, 5]) == pytest.approx(40.0)            # 20 symbols x 2 bits
    assert entropy_bits([7]) == 0.0
    assert entropy_bits([]) == 0.0
    assert entropy_bits([0, 3, 1]) == pytest.approx(4 * (-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))))


def test_int_entropy():
    assert int_entropy_bits(np.array([-3, -3, 10**15, 10**15], np.int64)) == pytest.approx(4.0)
    assert int_entropy_bits(np.arange(256, dtype=np.uint8).reshape(16, 16)) == pytest.approx(256 * 8)
    assert int_entropy_bits(np.array([True, False, True, True])) == pytest.approx(
        4 * (-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))))
    assert int_entropy_bits(np.zeros(0, np.int32)) == 0.0
    assert sorted(symbol_counts(np.array([2**63 - 1, 0, 0], np.int64)).tolist()) == [1, 2]
    assert sorted(symbol_counts(np.array([2**64 - 1, 5], np.uint64)).tolist()) == [1, 1]


def test_byte_entropy():
    assert byte_entropy_bits(bytes(range(256)) * 2) == pytest.approx(512 * 8)
    assert byte_entropy_bits(np.zeros(4, np.float32)) == 0.0
