"""The eg encoder's internal paths: whichever one writes a tensor, the payload is the same.

The encoder picks between paths for speed alone: codes put four, three or
two at a time, zero runs counted per element or run by run, table indices
kept from the scan (a bounded cache) or quantized again, values inside the
scan's window or outliers.  Each test forces the paths and compares the
payloads byte for byte, and with the decoder, which is the spec's.
"""
from __future__ import annotations

import numpy as np
import pytest

from gradstore.codecs import get_codec
from gradstore.codecs.eg import kernels as eg_kernels
from gradstore.codecs.eg import passes as eg_passes
from gradstore.codecs.eg import plan as eg_plan
from gradstore.errors import NotEncodableError

BLOCK = eg_kernels.BLOCK
SPECS = ["eg:k=0", "eg:k=3,sign=zigzag", "eg:k=1,sign=bit-nonzero", "eg:k=auto,remap=rank",
         "eg:k=auto,remap=rank,zeros=run", "eg:k=0,sign=zigzag,zeros=run", "eg:k=2,sign=bit-nonzero,remap=rank,zeros=run"]


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    n = 42 * 410                                              # over two blocks, in rows of 410
    dense = (rng.laplace(size=n) * 3e-4).astype(np.float32)
    dense[rng.random(n) < 0.005] = 0.0                       # scattered zeros, as real gradients have
    iid = dense.copy()
    iid[rng.random(n) < 0.95] = 0.0                          # short runs of zeros at random
    rows = dense.copy().reshape(-1, 410)
    rows[rng.random(rows.shape[0]) < 0.9] = 0.0              # long runs, across block borders
    wild = dense.astype(np.float64)
    wild[::1013] = 37.0                                      # outliers, beyond the scan's window
    wild[5::2027] = 3e4                                      # codewords over 56 bits
    wild[BLOCK - 2:BLOCK + 3] = 0.0                          # a run across the first block border
    far = (10**12 + rng.integers(-50, 50, n)).astype(np.int64)
    far[rng.random(n) < 0.3] = 0                             # zeros outside the window
    no_zeros = np.abs(dense) + np.float32(1e-3)
    return {"dense": dense, "iid": iid, "rows": rows.reshape(-1), "wild": wild, "far": far, "no zeros": no_zeros}


ARRAYS = arrays()


def payload(spec: str, x: np.ndarray) -> bytes:
    return get_codec(spec).encode(x).payload


@pytest.fixture
def reference_payloads():
    return {(spec, name): payload(spec, x) for spec in SPECS for name, x in ARRAYS.items()}


def check_same(reference_payloads, dequantized) -> None:
    for (spec, name), expected in reference_payloads.items():
        x = ARRAYS[name]
        got = payload(spec, x)
        assert got == expected, (spec, name)
        out = get_codec(spec).decode(got, x.dtype, x.shape)
        assert np.array_equal(out, x if x.dtype.kind == "i" else dequantized(x, 1e6)), (spec, name)


@pytest.mark.parametrize("group", [2, 3, 4])
def test_every_group_size_writes_the_same(monkeypatch, reference_payloads, dequantized, group):
    monkeypatch.setattr(eg_plan, "group_for", lambda bits: group)
    monkeypatch.setattr(eg_passes, "group_for", lambda bits: group)
    check_same(reference_payloads, dequantized)


@pytest.mark.parametrize("sparse, scattered", [(False, False), (True, False), (True, True)])
def test_both_run_counters_count_the_same(monkeypatch, reference_payloads, dequantized, sparse, scattered):
    """Runs counted per element or run by run; the non-zeros listed for the writer or not
    (for dense arrays the list overflows and is dropped)."""
    monkeypatch.setattr(eg_passes.Source, "mostly_zeros", property(lambda self: sparse))
    monkeypatch.setattr(eg_passes.Source, "scattered", property(lambda self: scattered))
    check_same(reference_payloads, dequantized)


@pytest.mark.parametrize("long_runs", [False, True])
def test_zero_runs_a_word_at_a_time_or_not(monkeypatch, reference_payloads, dequantized, long_runs):
    monkeypatch.setattr(eg_passes.Source, "long_zero_runs", property(lambda self: long_runs))
    check_same(reference_payloads, dequantized)


def test_the_writer_uses_the_list_of_non_zeros_only_when_complete(monkeypatch):
    x = ARRAYS["iid"]
    source = eg_passes.Source(x, 1e6)
    assert source.scattered
    source.scan(True)
    assert source.nonzeros.listed() is not None and source.nonzeros.listed().size == np.count_nonzero(
        np.rint(x.astype(np.float64) * 1e6))
    monkeypatch.setattr(eg_passes, "CACHE", 40)            # room for 10: the list overflows
    source = eg_passes.Source(x, 1e6)
    source.scan(True)
    assert source.nonzeros.listed() is None


@pytest.mark.parametrize("cache, chunk", [(0, eg_passes.CHUNK), (BLOCK + 100, BLOCK), (3 * BLOCK, 1000)])
def test_the_key_cache_changes_nothing(monkeypatch, reference_payloads, dequantized, cache, chunk):
    """No cache, or one that holds only the first chunks (chunk borders inside blocks too)."""
    monkeypatch.setattr(eg_passes, "CACHE", cache)
    monkeypatch.setattr(eg_passes, "CHUNK", chunk)
    check_same(reference_payloads, dequantized)


def test_a_window_too_wide_for_the_cache(dequantized):
    """Table indices of 16 bits or more: the writer quantizes again."""
    x = np.linspace(-0.4, 0.4, 70_001) + np.random.default_rng(3).laplace(size=70_001) * 1e-3
    for spec in ("eg:k=auto,remap=rank", "eg:k=auto,zeros=run"):
        codec = get_codec(spec)
        source = eg_passes.Source(x, codec.params["scale"])
        assert source.window()[1] + 2 > 1 << 16
        out = codec.decode(codec.encode(x).payload, x.dtype, x.shape)
        assert np.array_equal(out, dequantized(x, 1e6))


@pytest.mark.parametrize("n", [BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 3])
@pytest.mark.parametrize("spec", SPECS)
def test_block_borders(spec, n, dequantized):
    rng = np.random.default_rng(n)
    x = rng.laplace(size=n) * 1e-4
    x[rng.random(n) < 0.5] = 0.0
    x[-3:] = 0.0                                              # trailing zeros, a final run
    codec = get_codec(spec)
    assert np.array_equal(codec.decode(codec.encode(x).payload, x.dtype, x.shape), dequantized(x, 1e6))


@pytest.mark.parametrize("spec", ["eg:k=0", "eg:k=auto,remap=rank", "eg:k=auto,remap=rank,zeros=run"])
@pytest.mark.parametrize("where", [0, BLOCK - 1, BLOCK, 3 * BLOCK + 17])
@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e30])
def test_uncodable_elements_are_named_on_every_path(monkeypatch, spec, where, bad):
    monkeypatch.setattr(eg_passes, "CHUNK", 2 * BLOCK)
    for zeros in (0.0, 0.97):                                 # counted per element, or run by run
        rng = np.random.default_rng(1)
        x = (rng.laplace(size=4 * BLOCK) * 1e-4).astype(np.float32)
        x[rng.random(x.size) < zeros] = 0.0
        x[where] = bad
        with pytest.raises(NotEncodableError, match=rf"element \({where},\)"):
            get_codec(spec).encode(x)


def test_floats_quantized_beyond_2_to_the_51():
    """Where float keys stop being exact, values go the outlier path (once a wrong codeword)."""
    x = 1e10 + np.arange(3000) * 3.0                          # q about 2**53
    x[::7] = 0.0
    for spec in ("eg:k=auto,remap=rank", "eg:k=auto,zeros=run", "eg:k=0", "eg:k=2,sign=zigzag,remap=rank"):
        codec = get_codec(spec)
        out = codec.decode(codec.encode(x).payload, x.dtype, x.shape)
        assert np.array_equal(out, np.rint(x * 1e6) * (1 / 1e6))
