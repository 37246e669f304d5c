"""Shared fixtures of the codec tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture(scope="session")
def reference():
    """tools/eg_reference.py, the original pure-Python bit counter."""
    spec = importlib.util.spec_from_file_location("eg_reference", TOOLS / "eg_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _body_bits(payload: bytes, nbits: int, header: int = 40) -> str:
    return "".join(f"{b:08b}" for b in payload[header:])[:nbits]


def _dequantized(x: np.ndarray, scale: float) -> np.ndarray:
    q = np.rint(x.astype(np.float64) * scale)
    return (q * (1.0 / scale)).astype(x.dtype)


@pytest.fixture(scope="session")
def body_bits():
    """body_bits(payload, nbits): the body of an eg payload as a '0'/'1' string."""
    return _body_bits


@pytest.fixture(scope="session")
def dequantized():
    """dequantized(x, scale): what eg must decode floats to, rint(x*scale) * (1/scale) as x's dtype."""
    return _dequantized
