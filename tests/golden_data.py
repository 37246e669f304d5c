"""The content of tests/golden/v1.gs and v2.gs, and how it was written.

Regenerate only on a deliberate format change (with a new format version):
    python tests/golden_data.py tests/golden/v2.gs
"""
from __future__ import annotations

import sys
import time
from unittest import mock

import ml_dtypes
import numpy as np

import gradstore

FIXED_TIME_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def expected_arrays() -> dict[str, np.ndarray]:
    """Deterministic arrays (no RNG, so numpy versions cannot change them)."""
    ramp = np.arange(-24, 24, dtype=np.float64) / 7.0
    return {
        "R_0_E_0_S_0_B_0/model.layers.0.mlp.up_proj.weight": ramp.astype(np.float32).reshape(6, 8),
        "R_0_E_0_S_0_B_0/model.layers.0.input_layernorm.weight": ramp[:8].astype(ml_dtypes.bfloat16),
        "R_0_E_0_S_0_B_1/lm_head.weight": ramp.astype(np.float16).reshape(4, 3, 4),
        "R_1_E_2_S_10_B_3/model.embed_tokens.weight": ramp[:6].reshape(2, 3),
        "R_1_E_2_S_10_B_3/counts": np.arange(-3, 3, dtype=np.int64),
        "R_1_E_2_S_10_B_3/mask": np.array([True, False, True]),
        "R_1_E_2_S_10_B_3/scalar": np.array(2.5, np.float32),
        "R_1_E_2_S_10_B_3/empty": np.zeros((0, 4), np.uint16),
        "plain/key": np.arange(5, dtype=np.uint8),
    }


EXPECTED = list(expected_arrays())


def write_golden(path) -> None:
    """Write the golden store with a pinned clock, so its bytes are reproducible."""
    with mock.patch.object(time, "time_ns", return_value=FIXED_TIME_NS), \
            mock.patch("socket.gethostname", return_value="golden"):
        with gradstore.open(path, "x") as gs:
            arrays = expected_arrays()
            for key in EXPECTED[:-1]:
                gs.write(key, arrays[key])
            gs.write("plain/key", np.zeros(5, np.uint8))
            gs.write("plain/key", arrays["plain/key"], overwrite=True)


if __name__ == "__main__":
    write_golden(sys.argv[1])
