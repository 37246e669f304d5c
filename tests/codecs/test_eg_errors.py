"""Corrupt, truncated and mismatched eg payloads fail with a clear CodecError, never a crash."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradstore.codecs import get_codec
from gradstore.errors import CodecError

SPECS = ["eg:k=0", "eg:k=auto,remap=rank", "eg:k=auto,zeros=run,sign=zigzag",
         "eg:k=2,sign=bit-nonzero,remap=rank,zeros=run"]


def sample(n: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(7)
    x = rng.laplace(size=n) * 1e-3
    x[rng.random(n) < 0.4] = 0
    return x.astype(np.float32)


def encoded(spec: str) -> bytes:
    return get_codec(spec).encode(sample()).payload


def patched(payload: bytes, offset: int, new: bytes) -> bytes:
    return payload[:offset] + new + payload[offset + len(new):]


@pytest.mark.parametrize("spec", SPECS)
def test_truncated_anywhere(spec):
    payload = encoded(spec)
    codec = get_codec(spec)
    for cut in [0, 1, 39, 40, 41, len(payload) // 2, len(payload) - 1]:
        with pytest.raises(CodecError, match="truncated|shorter"):
            codec.decode(payload[:cut], np.float32, (2000,))


@pytest.mark.parametrize("offset, new, words", [
    (0, b"XX", "not an eg payload: magic"),
    (2, b"\x02", "format version 2"),
    (3, b"\xe0", "bad header fields"),
    (3, b"\x13", "bad header fields"),                       # sign mode 3 does not exist
    (4, b"\x3f", "bad header fields"),                       # k = 63
    (7, b"\x01", "bad header fields"),                       # reserved byte
    (16, b"\x05", "holds 1797 elements, the shape asks for 2000"),   # 0x07d0 -> 0x0705
    (32, b"\xff\xff", "its header says"),                    # nbits beyond the payload
])
def test_corrupt_header(offset, new, words):
    payload = encoded("eg:k=auto,zeros=run,sign=zigzag")
    with pytest.raises(CodecError, match=words):
        get_codec("eg:k=auto,zeros=run,sign=zigzag").decode(patched(payload, offset, new),
                                                             np.float32, (2000,))


def test_trailing_bytes_and_padding():
    codec = get_codec("eg:k=0")
    payload = codec.encode(np.array([1, 2, 3], np.int64)).payload     # 4 + 4 + 6 = 14 bits
    with pytest.raises(CodecError, match="trailing bytes"):
        codec.decode(payload + b"\0", np.int64, (3,))
    with pytest.raises(CodecError, match="padding bits are not zero"):
        codec.decode(payload[:-1] + bytes([payload[-1] | 1]), np.int64, (3,))


def test_body_errors_name_what_went_wrong():
    codec = get_codec("eg:k=0")
    payload = codec.encode(np.array([1, 2, 3], np.int64)).payload
    zeros = payload[:40] + b"\0\0"
    with pytest.raises(CodecError, match="invalid codeword"):
        codec.decode(zeros, np.int64, (3,))
    # one bit less in the header: the last codeword runs past the end of the body
    short = patched(payload, 32, (13).to_bytes(8, "little"))
    with pytest.raises(CodecError, match="truncated"):
        codec.decode(short, np.int64, (3,))
    zero = get_codec("eg:k=0").encode(np.array([0, 0], np.int64)).payload   # "10" "10"
    with pytest.raises(CodecError, match="sign bit set on a zero"):
        codec.decode(patched(zero, 40, bytes([0b11100000])), np.int64, (2,))


def test_run_longer_than_the_tensor():
    codec = get_codec("eg:k=0,zeros=run")
    payload = codec.encode(np.zeros(3, np.int64)).payload      # a single run of 3
    two = patched(payload, 16, (2).to_bytes(8, "little"))      # now claims 2 elements
    with pytest.raises(CodecError, match="zero run longer than the tensor"):
        codec.decode(two, np.int64, (2,))


def test_rank_beyond_the_table():
    codec = get_codec("eg:k=0,remap=rank")
    payload = codec.encode(np.array([4, 4, 4], np.int64)).payload   # table (4), ranks 0
    body = "".join(f"{b:08b}" for b in payload[40:])
    nbits = int.from_bytes(payload[32:40], "little")
    table_bits = nbits - 3 * 2
    bad = body[:table_bits] + "0100" + body[table_bits + 2:nbits]     # rank 1, then sign
    bad_nbits = len(bad)
    bad += "0" * (-len(bad) % 8)
    new = patched(payload, 32, bad_nbits.to_bytes(8, "little"))[:40] + \
        int(bad, 2).to_bytes(len(bad) // 8, "big")
    with pytest.raises(CodecError, match="rank beyond the end of the table"):
        codec.decode(new, np.int64, (3,))


def test_payload_from_another_codec_or_dtype():
    payload = encoded("eg:k=auto,remap=rank")
    for spec in ("eg:k=auto", "eg:k=auto,remap=rank,sign=zigzag", "eg:k=auto,remap=rank,zeros=run"):
        with pytest.raises(CodecError, match="other parameters"):
            get_codec(spec).decode(payload, np.float32, (2000,))
    with pytest.raises(CodecError, match="written with k="):
        get_codec("eg:k=1,remap=rank").decode(payload, np.float32, (2000,))
    with pytest.raises(CodecError, match="scale"):
        get_codec("eg:k=auto,remap=rank,scale=1000").decode(payload, np.float32, (2000,))
    with pytest.raises(CodecError, match="does not match dtype int32"):
        get_codec("eg:k=auto,remap=rank").decode(payload, np.int32, (2000,))
    with pytest.raises(CodecError, match="not an eg payload"):
        get_codec("eg").decode(get_codec("zstd").encode(sample()).payload, np.float32, (2000,))


def test_decoded_integers_must_fit_the_dtype():
    codec = get_codec("eg:k=0")
    payload = codec.encode(np.array([300, -5], np.int64)).payload
    with pytest.raises(CodecError, match="does not fit int8"):
        codec.decode(payload, np.int8, (2,))
    with pytest.raises(CodecError, match="does not fit uint16"):
        codec.decode(payload, np.uint16, (2,))
    with pytest.raises(CodecError, match="does not fit bool"):
        codec.decode(payload, np.bool_, (2,))


@settings(max_examples=300, deadline=None, database=None)
@given(spec=st.sampled_from(SPECS), data=st.data())
def test_random_corruption_never_crashes(spec, data):
    """Flipped bits and bytes give CodecError or an array of the right shape: no crash, no hang."""
    payload = bytearray(encoded(spec))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(payload) - 1))
        if data.draw(st.booleans()):
            payload[at] ^= 1 << data.draw(st.integers(0, 7))
        else:
            payload[at] = data.draw(st.integers(0, 255))
    try:
        out = get_codec(spec).decode(bytes(payload), np.float32, (2000,))
    except CodecError:
        return
    assert out.shape == (2000,) and out.dtype == np.float32
