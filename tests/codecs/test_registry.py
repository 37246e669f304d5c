"""Specs, the registry and the parameter errors users see."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gradstore.codecs import Codec, available_codecs, get_codec, parse_spec
from gradstore.errors import CodecError, UnknownCodecError


@pytest.mark.parametrize("spec, expected", [
    ("eg:k=0,scale=1e6,sign=bit", ("eg", {"k": "0", "scale": "1e6", "sign": "bit"})),
    ("eg:k=auto,scale=1e6,remap=rank", ("eg", {"k": "auto", "scale": "1e6", "remap": "rank"})),
    ("zstd:level=3", ("zstd", {"level": "3"})),
    ("zlib:level=6", ("zlib", {"level": "6"})),
    ("raw", ("raw", {})),
    (" eg : k = 2 , sign=zigzag ", ("eg", {"k": "2", "sign": "zigzag"})),
    ("zstd:", ("zstd", {})),
])
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec, words", [
    ("", "bad codec spec"),
    (":k=1", "bad codec spec"),
    ("eg:k", "'k' is not name=value"),
    ("eg:k=", "'k=' is not name=value"),
    ("eg:=3", "is not name=value"),
    ("eg:k=1,k=2", "'k' given twice"),
    ("e g", "bad codec spec"),
])
def test_parse_spec_errors(spec, words):
    with pytest.raises(CodecError, match=words):
        parse_spec(spec)


def test_available_codecs_lists_builtins():
    assert {"eg", "raw", "zlib", "zstd"} <= set(available_codecs())


def test_unknown_codec_lists_what_exists():
    with pytest.raises(UnknownCodecError) as err:
        get_codec("huffman:order=2")
    message = str(err.value)
    assert "'huffman'" in message
    for name in available_codecs():
        assert name in message


@pytest.mark.parametrize("spec, words", [
    ("eg:k=63", r"bad value '63' for parameter 'k' \(out of range \[0, 62\]"),
    ("eg:k=-1", "parameter 'k'"),
    ("eg:k=1.5", "parameter 'k'"),
    ("eg:scale=0", "parameter 'scale'.*finite number > 0"),
    ("eg:scale=nan", "parameter 'scale'"),
    ("eg:scale=abc", "parameter 'scale' \\(not a number\\)"),
    ("eg:sign=minus", "sign accepts bit | bit-nonzero | zigzag"),
    ("eg:remap=freq", "remap accepts none | rank"),
    ("zstd:level=23", "level accepts an integer -7..22"),
    ("zlib:level=x", r"parameter 'level' \(not an integer\)"),
])
def test_bad_parameter_values(spec, words):
    with pytest.raises(CodecError, match=words):
        get_codec(spec)


def test_unknown_parameter_lists_accepted_ones():
    with pytest.raises(CodecError) as err:
        get_codec("eg:order=3")
    message = str(err.value)
    assert "unknown parameter(s) order" in message
    for name in ("k=", "scale=", "sign=", "remap=", "zeros="):
        assert name in message
    with pytest.raises(CodecError, match="raw.*accepted: no parameters"):
        get_codec("raw:level=1")


def test_spec_is_canonical_and_rebuilds_the_codec():
    codec = get_codec("eg:sign=bit,remap=rank,scale=1e6,k=auto")
    assert codec.spec == "eg:k=auto,remap=rank,scale=1000000.0,sign=bit,zeros=plain"
    assert get_codec(codec.spec).spec == codec.spec
    assert get_codec(codec.spec) == codec and hash(get_codec(codec.spec)) == hash(codec)
    assert get_codec("eg").spec == "eg:k=0,remap=none,scale=1000000.0,sign=bit,zeros=plain"
    assert get_codec("zstd").spec == "zstd:level=3"
    assert get_codec("raw").spec == "raw"
    assert get_codec("eg:scale=0.001").params["scale"] == 0.001
    assert get_codec(codec) is codec


def test_python_values_and_strings_agree():
    from gradstore.codecs.eg import EGCodec
    assert EGCodec(k=3, scale=1000) == get_codec("eg:k=3,scale=1000")
    assert EGCodec(k=np.int64(3)).params["k"] == 3
    with pytest.raises(CodecError):
        EGCodec(k=True)


def test_codec_lossless_flags():
    assert get_codec("zstd").is_lossless(np.dtype(np.float32))
    eg = get_codec("eg")
    assert not eg.lossless
    assert not eg.is_lossless(np.dtype(np.float32))
    assert eg.is_lossless(np.dtype(np.int16)) and eg.is_lossless(np.dtype(np.bool_))


def test_importing_codecs_loads_no_compiled_dependency():
    code = ("import sys, gradstore.codecs as c; c.available_codecs(); c.parse_spec('eg:k=1'); "
            "c.get_codec('raw'); print('numba' in sys.modules, 'zstandard' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_codec_is_abstract():
    with pytest.raises(TypeError):
        Codec()
