"""fpx: lossless for every bit pattern, corrupt payloads caught, stored variants, frozen payloads."""
from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import gradstore
from gradstore.codecs import get_codec
from gradstore.codecs.testing import check_codec, check_roundtrip, check_truncation
from gradstore.errors import CodecError

FIXTURES = Path(__file__).parent / "fixtures" / "fpx_v1.json"
BF16 = np.dtype(ml_dtypes.bfloat16)
LANES = {np.dtype(np.float16): np.uint16, BF16: np.uint16, np.dtype(np.float32): np.uint32,
         np.dtype(np.float64): np.uint64}
FLOATS = list(LANES)
SMALL = "fpx:chunk=4096"        # several chunks out of a few thousand values


def random_bits(dtype: np.dtype, n: int, seed: int = 0) -> np.ndarray:
    lane = LANES[dtype]
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(lane).max, n, dtype=lane, endpoint=True).view(dtype)


def special_values(dtype: np.dtype) -> np.ndarray:
    """±0, ±Inf, NaNs with payloads and signs, the smallest subnormals and the extremes."""
    lane = LANES[dtype]
    w = np.dtype(lane).itemsize * 8
    sign = 1 << (w - 1)
    exp_bits = {16: 8 if dtype == BF16 else 5, 32: 8, 64: 11}[w]
    mant = w - 1 - exp_bits
    inf = ((1 << exp_bits) - 1) << mant
    patterns = [0, sign, inf, sign | inf, inf | 1, inf | (1 << (mant - 1)), sign | inf | 5,
                inf | ((1 << mant) - 1), 1, sign | 1, (1 << mant) - 1, 1 << mant, inf - 1,
                sign | (inf - 1)]
    return np.array(patterns, dtype=lane).view(dtype)


def grad_like(dtype, n: int, seed: int = 0, zeros: float = 0.3) -> np.ndarray:
    """Heavy-tailed values of differing scales, with exact zeros and zero rows."""
    rng = np.random.default_rng(seed)
    x = rng.laplace(size=n) * np.repeat(10.0 ** rng.uniform(-7, -2, -(-n // 256)), 256)[:n]
    x[rng.random(n) < zeros] = 0.0
    x[n // 3: n // 2] = 0.0
    return x.astype(dtype)


def test_codec_checks():
    check_codec(get_codec("fpx"))
    check_codec(get_codec(SMALL))


def test_spec_and_params():
    assert get_codec("fpx").spec == "fpx:chunk=65536"
    with pytest.raises(CodecError, match="chunk accepts an integer 4096"):
        get_codec("fpx:chunk=100")


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 4095, 4096, 4097, 9999])
def test_random_bit_patterns(dtype, n):
    check_roundtrip(get_codec(SMALL), random_bits(dtype, n, seed=n))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_special_values(dtype):
    x = special_values(dtype)
    assert np.isnan(x).sum() >= 3 and np.isinf(x).sum() == 2
    codec = get_codec(SMALL)
    check_roundtrip(codec, x)
    check_roundtrip(codec, np.tile(x, 700))                     # across chunk borders
    check_roundtrip(codec, np.concatenate([np.zeros(5000, dtype), x, -np.zeros(3, dtype)]))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_gradients_shrink_and_match_the_model_bound(dtype):
    x = grad_like(dtype, 20_000)
    encoded = get_codec(SMALL).encode(x)
    check_roundtrip(get_codec(SMALL), x)
    assert len(encoded.payload) < 0.75 * x.nbytes
    info = encoded.info             # beyond the bound: tables, header, directory, final states
    overhead = 8 * (info["table_bytes"] + 32 + 20 * info["chunks"])
    assert encoded.entropy_bits <= encoded.nbits <= 1.01 * encoded.entropy_bits + overhead


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_empty_odd_and_shaped(dtype):
    codec = get_codec("fpx")
    for x in (np.zeros(0, dtype), np.zeros((0, 3), dtype), np.array(1.5, dtype=dtype),
              grad_like(dtype, 7 * 13).reshape(7, 13), grad_like(dtype, 65537)):
        check_roundtrip(codec, x)


def test_all_zero_and_constant_chunks():
    codec = get_codec(SMALL)
    for x in (np.zeros(10_000, np.float32), -np.zeros(10_001, BF16), np.full(9000, 0.5, np.float16)):
        check_roundtrip(codec, x)
    assert len(get_codec("fpx").encode(np.zeros(100_000, np.float32)).payload) < 120


def test_other_dtypes_are_stored_raw():
    codec = get_codec("fpx")
    for x in (np.arange(10, dtype=np.int32), np.array([True, False]), np.arange(5, dtype=np.uint8)):
        encoded = codec.encode(x)
        assert encoded.payload[3] == 0 and encoded.payload[32:] == x.tobytes()
        check_roundtrip(codec, x)


def test_truncated_payloads():
    for dtype in FLOATS:
        check_truncation(get_codec(SMALL), grad_like(dtype, 5000))


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), BF16], ids=str)
def test_every_flipped_byte_is_caught(dtype):
    codec = get_codec(SMALL)
    x = grad_like(dtype, 6000)
    payload = codec.encode(x).payload
    for at in range(0, len(payload), max(1, len(payload) // 200)):
        bad = bytearray(payload)
        bad[at] ^= 0x41
        with pytest.raises(CodecError, match="fpx"):
            codec.decode(bytes(bad), x.dtype, x.shape)


def test_corrupt_body_with_a_matching_checksum_is_caught():
    """Damage behind a recomputed checksum still gives a CodecError, never garbage or a crash."""
    import xxhash
    codec = get_codec(SMALL)
    x = grad_like(np.float32, 9000)
    payload = codec.encode(x).payload
    rng = np.random.default_rng(1)
    caught = 0
    for _ in range(300):
        bad = bytearray(payload)
        at = int(rng.integers(32, len(bad)))
        bad[at] ^= int(rng.integers(1, 256))
        bad[24:32] = xxhash.xxh3_64_digest(bytes(bad[32:]))
        try:
            out = codec.decode(bytes(bad), x.dtype, x.shape)
        except CodecError:
            caught += 1
            continue
        assert out.shape == x.shape     # a flip in the raw bytes decodes, to other values
    assert caught > 0


def test_wrong_dtype_or_shape():
    codec = get_codec("fpx")
    x = grad_like(np.float32, 100)
    payload = codec.encode(x).payload
    with pytest.raises(CodecError, match="expected 101"):
        codec.decode(payload, np.float32, (101,))
    with pytest.raises(CodecError, match="wrong dtype"):
        codec.decode(payload, BF16, (100,))
    with pytest.raises(CodecError, match="not an fpx"):
        codec.decode(b"XX" + payload[2:], np.float32, (100,))


def test_variants_through_the_store(tmp_path):
    tensors = {"R_0_E_0_S_0_B_0/w": grad_like(np.float32, 5000, seed=1),
               "R_0_E_0_S_0_B_0/b": grad_like(BF16, 333, seed=2),
               "R_0_E_0_S_0_B_1/h": special_values(np.dtype(np.float16)),
               "R_0_E_0_S_0_B_1/e": np.zeros(0, np.float32)}
    with gradstore.open(tmp_path / "run.gs", "w") as gs:
        for key, x in tensors.items():
            gs.write(key, x)
        res = gs.encode("fpx:chunk=4096")
        assert sorted(res.written) == sorted(tensors) and not res.failed
        assert gs.encode("fpx:chunk=4096").skipped
    with gradstore.open(tmp_path / "run.gs", "r") as gs:
        for key, x in tensors.items():
            out = gs.variant(key, "fpx:chunk=4096")
            assert out.dtype == x.dtype and out.tobytes() == x.tobytes()
        row = [r for r in gs.sizes(["fpx:chunk=4096"]) if r["codec"] == "fpx:chunk=4096"][0]
        assert row["lossless"] and 0 < row["efficiency"] <= 1


CASES = [
    ("fpx", "float32", [0.0, -0.0, 1e-6, -2.5e-3, 3.0, float("inf"), float("-inf"), float("nan"), 1e-45]),
    ("fpx", "bfloat16", [0.0, 0.0, 0.5, 0.0, -0.25, 0.0, 0.0, 1e-5, -7.0]),
    ("fpx", "float16", [1.0, -2.0, 0.0, 0.125, 6e-8, 65504.0]),
    ("fpx", "float64", [1e-300, -0.0, 5e-324, 1.0, -3.5e10]),
    ("fpx:chunk=4096", "bfloat16", "grad"),
    ("fpx", "int16", [1, -2, 3]),
    ("fpx", "float32", []),
]


def _array(dtype_name: str, values) -> np.ndarray:
    dtype = BF16 if dtype_name == "bfloat16" else np.dtype(dtype_name)
    if values == "grad":
        return grad_like(dtype, 4500, seed=7)
    return np.array(values, dtype=np.float64 if dtype.kind in "fV" else np.int64).astype(dtype)


if os.environ.get("GRADSTORE_REGEN_FIXTURES"):  # run once when the format version changes
    FIXTURES.write_text(json.dumps(
        [{"spec": spec, "dtype": dtype, "values": values,
          "payload": get_codec(spec).encode(_array(dtype, values)).payload.hex()}
         for spec, dtype, values in CASES], indent=1) + "\n")


@pytest.mark.parametrize("case", json.loads(FIXTURES.read_text()), ids=lambda c: f"{c['spec']}-{c['dtype']}")
def test_frozen_payloads(case):
    """Payloads of format version 1 still decode, and encoding still writes them."""
    array = _array(case["dtype"], case["values"])
    codec = get_codec(case["spec"])
    payload = bytes.fromhex(case["payload"])
    assert codec.encode(array).payload == payload
    out = codec.decode(payload, array.dtype, array.shape)
    assert out.dtype == array.dtype and out.tobytes() == array.tobytes()


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), BF16], ids=str)
def test_embedding_like_sparse_rows(dtype):
    """Mostly zero rows (tokens not in the batch): very skewed tables, long runs of one symbol."""
    rng = np.random.default_rng(5)
    x = np.zeros((3000, 64))
    rows = rng.random(3000) < 0.03
    x[rows] = rng.laplace(size=(rows.sum(), 64)) * 1e-4
    check_roundtrip(get_codec("fpx"), x.astype(dtype))
    check_roundtrip(get_codec(SMALL), x.astype(dtype))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("chunk", [4097, 4099, 5000])
def test_chunks_not_a_multiple_of_four(dtype, chunk):
    """Chunks of odd lengths: each chunk's states restart at its own first value,
    and the decoder's unchecked groups of four end at a different place in
    every chunk, the rest decoded one by one.  Wide-range values, zero runs
    and random bit patterns, bit-exact."""
    codec = get_codec(f"fpx:chunk={chunk}")
    n = 3 * chunk + 3
    for x in (grad_like(dtype, n, seed=chunk), random_bits(dtype, n, seed=chunk),
              np.concatenate([np.zeros(chunk - 1, dtype), grad_like(dtype, n, seed=1)])):
        check_roundtrip(codec, x)


def chunk_modes(payload: bytes, n: int, chunk: int) -> list[int]:
    """The loop the decoder picks for each chunk of a payload, from the chunk's tables."""
    from gradstore.codecs import fpx_decode as D
    from gradstore.codecs import fpx_kernels as K
    body = np.frombuffer(payload, dtype=np.uint8)[32:]
    count = -(-n // chunk)
    sizes = body[:12 * count].view("<u4").reshape(count, 3).astype(np.int64)
    dec = np.empty(K.CTX << K.SCALE, dtype=np.int64)
    zeros = np.empty(K.CTX, dtype=np.int64)
    p, modes = 12 * count, []
    for c in range(count):
        assert D._read_tables(body, p, p + sizes[c, 0], dec, zeros) == 0
        modes.append(int(D.chunk_mode(zeros)))
        p += int(sizes[c].sum())
    return modes


def mode_mix(dtype, chunk: int) -> np.ndarray:
    """Chunks of each kind in turn: no zeros, some zeros, nearly all zeros (one value
    in 40 non-zero), each of ``chunk`` values or of a few more, so that chunk
    borders fall inside them."""
    rng = np.random.default_rng(chunk)
    parts = []
    for i in range(6):
        n = chunk + 3 * i
        x = (rng.laplace(size=n) * np.repeat(10.0 ** rng.uniform(-7, -2, -(-n // 256)), 256)[:n]).astype(dtype)
        x[x == 0] = 1.0         # (float16 flushes the smallest to zero)
        if i % 3 == 1:
            x[rng.random(n) < 0.3] = 0.0
        elif i % 3 == 2:
            x[rng.random(n) < 0.975] = 0.0
        parts.append(x)
    return np.concatenate(parts)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("chunk", [4096, 4099])
def test_every_decoding_loop(dtype, chunk):
    """Chunks free of zeros, with some and with nearly only zeros each take their
    own loop in the decoder (DENSE, MIXED, SPARSE), and all decode bit-exact."""
    from gradstore.codecs.fpx_decode import DENSE, MIXED, SPARSE
    codec = get_codec(f"fpx:chunk={chunk}")
    x = mode_mix(dtype, chunk)
    modes = chunk_modes(codec.encode(x).payload, x.size, chunk)
    assert {DENSE, MIXED, SPARSE} <= set(modes)
    check_roundtrip(codec, x)
    bits = random_bits(dtype, 3 * chunk)      # NaNs, Infs and subnormals, no zero: DENSE throughout
    bits[bits == 0] = 1
    assert set(chunk_modes(codec.encode(bits).payload, bits.size, chunk)) == {DENSE}
    check_roundtrip(codec, bits)


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), BF16], ids=str)
def test_damage_behind_a_matching_checksum_in_every_loop(dtype):
    """Damage behind a recomputed checksum, in chunks of every kind: a CodecError or
    values of the right shape (a flip in the raw bytes), never a crash or a read
    past the payload."""
    import xxhash
    codec = get_codec(SMALL)
    x = mode_mix(dtype, 4096)
    payload = codec.encode(x).payload
    rng = np.random.default_rng(2)
    caught = 0
    for _ in range(400):
        bad = bytearray(payload)
        for at in rng.integers(32, len(bad), 1 + int(rng.integers(0, 3))):
            bad[int(at)] ^= int(rng.integers(1, 256))
        bad[24:32] = xxhash.xxh3_64_digest(bytes(bad[32:]))
        try:
            out = codec.decode(bytes(bad), x.dtype, x.shape)
        except CodecError as exc:
            assert "corrupt fpx payload" in str(exc)
            caught += 1
            continue
        assert out.shape == x.shape
    assert caught > 100
