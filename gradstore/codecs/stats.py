"""Order-0 entropy: the bound every codec's size is measured against."""
from __future__ import annotations

import numpy as np


def entropy_bits(counts: np.ndarray) -> float:
    """Total order-0 entropy, in bits, of a sample whose symbols occur ``counts`` times.

    This is H·n, the least a code with one codeword per symbol, built for
    this very sample, could spend (table not counted).
    """
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(np.sum(counts * np.log2(total / counts)))


def symbol_counts(values: np.ndarray) -> np.ndarray:
    """How often each distinct value of an integer array occurs (order not specified)."""
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    if flat.dtype == np.bool_:
        flat = flat.view(np.uint8)
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo < 4 * flat.size + 65536:  # bincount beats sorting when the range is small
        return np.bincount((flat - lo).astype(np.intp))
    return np.unique(flat, return_counts=True)[1]


def int_entropy_bits(values: np.ndarray) -> float:
    """Total order-0 entropy, in bits, of the values of an integer array."""
    return entropy_bits(symbol_counts(values))


def byte_entropy_bits(data: bytes | memoryview | np.ndarray) -> float:
    """Total order-0 entropy, in bits, of a byte string taken one byte at a time."""
    array = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else data.reshape(-1).view(np.uint8)
    return entropy_bits(np.bincount(array, minlength=256))
