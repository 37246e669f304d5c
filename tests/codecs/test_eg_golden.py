"""The eg bitstream, bit by bit: golden codewords, the reference coder, frozen payloads."""
from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from gradstore.codecs import get_codec

FIXTURES = Path(__file__).parent / "fixtures" / "eg_v1.json"


def bits_of(spec: str, values, dtype=np.int64) -> str:
    encoded = get_codec(spec).encode(np.array(values, dtype=dtype))
    return "".join(f"{b:08b}" for b in encoded.payload[40:])[:encoded.nbits]


@pytest.mark.parametrize("value, code", [
    (0, "10"), (1, "0100"), (-1, "0101"), (2, "0110"), (-2, "0111"), (3, "001000"),
    (-3, "001001"), (6, "001110"), (7, "00010000"), (-14, "00011111"),
])
def test_issue_examples_k0_sign_bit(value, code):
    """The codewords listed in the issue, for the original coder."""
    assert bits_of("eg:k=0,sign=bit", [value]) == code
    assert bits_of("eg:k=0,sign=bit", [value / 1e6], np.float64) == code


@pytest.mark.parametrize("spec, values, code", [
    ("eg:sign=bit-nonzero", [0, 1, -1, 0], "1" "0100" "0101" "1"),
    ("eg:sign=zigzag", [0, -1, 1, -2, 2], "1" "010" "011" "00100" "00101"),
    ("eg:k=1", [0, 1, 2, -3, 5], "100" "110" "01000" "01011" "01110"),
    ("eg:k=2,sign=zigzag", [0, -2, 2], "100" "111" "01000"),
    ("eg:k=3,sign=bit-nonzero", [0, -9], "1000" "0100011"),
])
def test_golden_codewords_other_modes(spec, values, code):
    assert bits_of(spec, values) == code


def test_remap_rank_table_then_ranks(body_bits):
    # |q| counts: 5 x3, 0 x2, 1 x1 -> table (5, 0, 1), deltas +5, -5, +1;
    # table order k_table = auto: EG1 of 5,5,1 = 0111,0111,11 (10 bits) beats EG0 (5+5+3),
    # and each non-zero delta carries its sign bit.
    encoded = get_codec("eg:k=0,remap=rank").encode(np.array([5, -5, 0, 5, 1, 0], dtype=np.int64))
    assert encoded.info["table_len"] == 3
    table = "0111" "0" "0111" "1" "11" "0"
    ranks = "10" "11" "0100" "10" "0110" "0100"      # rank codeword, then the sign bit
    assert encoded.info["table_bits"] == len(table)
    assert body_bits(encoded.payload, encoded.nbits) == table + ranks


def test_zero_runs_layout(body_bits):
    # [0, 0, 5, 0, -1, 0]: runs 2, 1, 1 (trailing); values |q| - 1 = 4, 0 with sign bits.
    # Run order auto: EG0 of 2,1,1 = 011,010,010 (9 bits) vs EG1 = 0100,11,11 (8 bits).
    encoded = get_codec("eg:k=0,zeros=run").encode(np.array([0, 0, 5, 0, -1, 0], dtype=np.int64))
    assert encoded.info["k_run"] == 1
    assert body_bits(encoded.payload, encoded.nbits) == "0100" "00101" "0" "11" "1" "1" "11"


def test_header_fields():
    encoded = get_codec("eg:k=auto,scale=1000,zeros=run,sign=zigzag").encode(
        np.array([0.5, -0.25, 0.0], dtype=np.float32))
    p = encoded.payload
    assert p[:2] == b"EG" and p[2] == 1
    assert p[3] == 2 | 8 | 16                                      # zigzag, runs, float
    assert p[4] == encoded.info["k"] and p[5] == encoded.info["k_run"] and p[6:8] == b"\0\0"
    assert np.frombuffer(p[8:16], "<f8")[0] == 1000.0
    assert np.frombuffer(p[16:40], "<u8").tolist() == [3, 0, encoded.nbits]
    assert len(p) == 40 + (encoded.nbits + 7) // 8


def test_bits_match_the_reference_coder(reference, body_bits):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.laplace(size=3000) * 1e-3, [0.0, -0.0, 2.5e-7, -2.5e-7, 1.5e-6, 0.4]])
    for array in (x.astype(np.float32), x.astype(np.float64), x.astype(ml_dtypes.bfloat16)):
        values = array.astype(np.float64).tolist()
        encoded = get_codec("eg:k=0,scale=1e6,sign=bit").encode(array)
        assert encoded.nbits == reference.count_bits(values, 1e6)
        assert body_bits(encoded.payload, encoded.nbits) == reference.bitstring(values, 1e6)


def test_reference_wraps_where_eg_does_not(reference):
    """The original's int32 wrap-around: eg codes 3000.0 as 3e9, the original as a negative."""
    assert reference.quantize(3000.0) == 3_000_000_000 - 2**32
    out = get_codec("eg").decode(get_codec("eg").encode(np.array([3000.0])).payload, np.float64, (1,))
    assert out[0] == 3000.0


CASES = [
    ("eg:k=0,scale=1e6,sign=bit", "float32", [0.0, 1e-6, -1e-6, 2.5e-6, -0.001234, 0.5]),
    ("eg:k=auto,scale=1e6,remap=rank", "float32", [0.001, -0.002, 0.001, 0.0, 0.001, 3e-5]),
    ("eg:k=auto,sign=zigzag,zeros=run", "bfloat16", [0.0, 0.0, 0.5, 0.0, -0.25, 0.0, 0.0]),
    ("eg:k=3,sign=bit-nonzero,scale=1000", "float16", [1.0, -2.0, 0.0, 0.125]),
    ("eg:k=auto,remap=rank,zeros=run", "int32", [0, 7, 7, 0, 0, -7, 2**30]),
    ("eg:k=0", "int64", [2**62 - 1, -(2**62 - 1), 0]),
    ("eg:k=auto,scale=1e6", "float64", []),
]


def _make_fixtures() -> list[dict]:
    cases = []
    for spec, dtype, values in CASES:
        array = np.array(values, dtype=np.float64 if "float" in dtype else np.int64)
        array = array.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
        cases.append({"spec": spec, "dtype": dtype, "values": values,
                      "payload": get_codec(spec).encode(array).payload.hex()})
    return cases


if os.environ.get("GRADSTORE_REGEN_FIXTURES"):  # run once when the format version changes
    FIXTURES.parent.mkdir(exist_ok=True)
    FIXTURES.write_text(json.dumps(_make_fixtures(), indent=1) + "\n")


@pytest.mark.parametrize("case", json.loads(FIXTURES.read_text()), ids=lambda c: c["spec"])
def test_frozen_payloads(case, dequantized):
    """Payloads written by format version 1 still decode, and encoding still writes them."""
    dtype = np.dtype(ml_dtypes.bfloat16) if case["dtype"] == "bfloat16" else np.dtype(case["dtype"])
    array = np.array(case["values"], dtype=np.float64 if dtype.kind in "fV" else np.int64).astype(dtype)
    codec = get_codec(case["spec"])
    payload = bytes.fromhex(case["payload"])
    assert codec.encode(array).payload == payload
    out = codec.decode(payload, dtype, array.shape)
    assert out.dtype == dtype and out.shape == array.shape
    if codec.is_lossless(dtype):
        assert np.array_equal(out, array)
    else:
        assert np.array_equal(out, dequantized(array, codec.params["scale"]))
