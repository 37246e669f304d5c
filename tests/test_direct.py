"""Direct I/O appends (gradstore.direct): bit-exact round trips, rollback, fallback, readers.

These run on the disk (pytest's tmp_path), where O_DIRECT has real
alignment rules. The crash tests of the direct writer are in
tests/test_direct_crash.py.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import gradstore
from gradstore import direct
from gradstore import format as fmt
from gradstore.segment import list_segments, segment_name

SEGMENT = 64 * 1024
STAGE = 2 * direct.BLOCK   # several writes per run, and records that straddle them


def supports_o_direct(path: Path) -> bool:
    if not direct.O_DIRECT:
        return False
    probe = path / ".probe"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | direct.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


@pytest.fixture(autouse=True)
def small_stage(monkeypatch):
    monkeypatch.setattr(direct, "STAGE", STAGE)


def bucket(rng: np.random.Generator, step: int) -> dict[str, np.ndarray]:
    """Odd sizes, every float width, empty tensors and scalars; some larger than STAGE."""
    out = {}
    for i in range(int(rng.integers(1, 7))):
        dt = [np.float32, ml_dtypes.bfloat16, np.float16, np.float64][(step + i) % 4]
        n = int(rng.choice([0, 1, 3, 17, 255, 1000, 3001, 9000]))
        out[f"layers.{i}.w"] = rng.standard_normal(n).astype(dt)
    out["norm.scale"] = np.array(step, dtype=np.float32)   # a 0-d tensor
    return out


def write_buckets(gs, rng, steps, start: int = 0) -> dict[str, np.ndarray]:
    written = {}
    for s in range(start, start + steps):
        name = f"R_0_E_0_S_{s}_B_{s % 3}"
        tensors = bucket(rng, s)
        gs.write_bucket(name, tensors)
        written.update({f"{name}/{m}": v for m, v in tensors.items()})
    return written


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def check_all(path, written: dict[str, np.ndarray]) -> None:
    with gradstore.open(path) as r:
        assert sorted(r.keys()) == sorted(written)
        for key, want in written.items():
            assert same(r.read(key, verify=True), want), key
        assert r.verify() == []


def segment_files(path: Path) -> list[Path]:
    ns = path / "main"
    return [ns / segment_name(fmt.STREAM_DATA, q) for q in list_segments(ns, fmt.STREAM_DATA)]


def writer_of(gs):
    return gs._writer.writers[fmt.STREAM_DATA]


def test_round_trip_bit_exact_across_rollovers(tmp_path):
    path = tmp_path / "d.gs"
    rng = np.random.default_rng(1)
    with gradstore.open(path, "w", segment_size=SEGMENT, direct_io=True) as gs:
        written = write_buckets(gs, rng, 40)
        w = writer_of(gs)
        assert w.direct == supports_o_direct(tmp_path)
        if w.direct:
            assert fcntl.fcntl(w.fd, fcntl.F_GETFL) & direct.O_DIRECT
            # while open, the file is padded to a whole block past its last record
            assert os.fstat(w.fd).st_size % direct.BLOCK == 0
        for key, want in written.items():   # the writer's own reads, through the page cache
            assert same(gs[key], want), key
    check_all(path, written)
    files = segment_files(path)
    assert len(files) > 3
    # closed segments are cut right after their last record
    with gradstore.open(path) as r:
        ends = {}
        for key in r.keys():
            e = r.entry(key)
            ends[e.seq] = max(ends.get(e.seq, 0), e.end)
    for f in files:
        seq = int(f.name[5:11])
        assert f.stat().st_size == ends.get(seq, fmt.SEG_HEADER_SIZE), f.name


def test_runs_ending_on_a_block_boundary(tmp_path):
    """Record sizes stepping by 64 bytes: some runs end exactly on a block
    boundary, some exactly fill the staging buffer."""
    path = tmp_path / "d.gs"
    written, aligned = {}, 0
    with gradstore.open(path, "w", segment_size=1 << 20, direct_io=True) as gs:
        for i in range(200):
            key = f"k/{i}"
            written[key] = np.full((i * 16) % 2500, i, dtype=np.float32)
            gs.write(key, written[key])
            aligned += writer_of(gs).size % direct.BLOCK == 0
        for key, want in written.items():
            assert same(gs[key], want), key
    assert aligned >= 3
    check_all(path, written)


def test_reopen_and_mix_with_buffered_writers(tmp_path):
    """Appends resume in the middle of a block: the tail read back and rewritten as it was."""
    path = tmp_path / "d.gs"
    rng = np.random.default_rng(2)
    written = {}
    for i, direct_io in enumerate([True, False, True, True, False, True]):
        with gradstore.open(path, "a", segment_size=SEGMENT, direct_io=direct_io) as gs:
            written.update(write_buckets(gs, rng, 5, start=10 * i))
            gs.write(f"plain/{i}", np.arange(i + 1, dtype=np.int64))
            written[f"plain/{i}"] = np.arange(i + 1, dtype=np.int64)
        check_all(path, written)


def test_overwrite_and_compact(tmp_path):
    path = tmp_path / "d.gs"
    rng = np.random.default_rng(3)
    with gradstore.open(path, "w", segment_size=SEGMENT, direct_io=True) as gs:
        written = write_buckets(gs, rng, 12)
        before, after = gs.compact()
        assert before == after   # direct I/O's padding is no garbage: nothing to reclaim
        for key in list(written)[::3]:
            written[key] = np.full(7, 3.5, dtype=np.float32)
            gs.write(key, written[key], overwrite=True)
        before, after = gs.compact()
        assert after < before
        written.update(write_buckets(gs, rng, 3, start=100))
    check_all(path, written)


def test_a_failed_write_leaves_nothing_and_the_store_goes_on(tmp_path, monkeypatch):
    path = tmp_path / "d.gs"
    rng = np.random.default_rng(4)
    gs = gradstore.open(path, "w", segment_size=SEGMENT, direct_io=True)
    written = write_buckets(gs, rng, 6)
    if not writer_of(gs).direct:
        gs.close()
        pytest.skip("this file system refuses O_DIRECT")
    real, calls = os.pwrite, []

    def failing(fd, data, pos):
        calls.append(pos)
        if len(calls) == 2:   # the run's second staged write
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, pos)

    big = {"a": rng.standard_normal(5000).astype(np.float32),
           "b": rng.standard_normal(3000).astype(np.float32)}
    monkeypatch.setattr(os, "pwrite", failing)
    with pytest.raises(gradstore.WriteError, match="No space left"):
        gs.write_bucket("R_0_E_0_S_99_B_0", big)
    monkeypatch.setattr(os, "pwrite", real)
    assert len(calls) == 2
    assert not any(k.startswith("R_0_E_0_S_99_") for k in gs.keys())
    written.update(write_buckets(gs, rng, 4, start=50))
    assert gs.verify() == []
    gs.close()
    check_all(path, written)


def test_o_direct_refused_at_open_falls_back_to_buffered(tmp_path, monkeypatch):
    real = os.open

    def no_direct(p, flags, *args, **kw):
        if flags & direct.O_DIRECT:
            if flags & os.O_CREAT:
                real(p, flags & ~direct.O_DIRECT, *args, **kw)   # as Linux: created, then refused
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(p, flags, *args, **kw)

    monkeypatch.setattr(os, "open", no_direct)
    path = tmp_path / "d.gs"
    rng = np.random.default_rng(5)
    with gradstore.open(path, "w", segment_size=SEGMENT, direct_io=True) as gs:
        written = write_buckets(gs, rng, 10)
        assert not writer_of(gs).direct
        assert not fcntl.fcntl(writer_of(gs).fd, fcntl.F_GETFL) & direct.O_DIRECT
    monkeypatch.setattr(os, "open", real)
    check_all(path, written)


@pytest.mark.parametrize("align", [1 << 20, 1], ids=["records", "header-too"])
def test_o_direct_refused_at_write_falls_back_to_buffered(tmp_path, monkeypatch, align):
    path = tmp_path / "d.gs"
    if not supports_o_direct(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    real, refused = os.pwrite, []

    def picky(fd, data, pos):   # a file system whose direct writes want more alignment (or any)
        if fcntl.fcntl(fd, fcntl.F_GETFL) & direct.O_DIRECT and (align == 1 or pos % align):
            refused.append(pos)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, pos)

    monkeypatch.setattr(os, "pwrite", picky)
    rng = np.random.default_rng(6)
    with gradstore.open(path, "w", segment_size=SEGMENT, direct_io=True) as gs:
        written = write_buckets(gs, rng, 10)
        assert refused and not writer_of(gs).direct
    monkeypatch.setattr(os, "pwrite", real)
    check_all(path, written)


def test_a_reader_following_the_writer_sees_every_record(tmp_path):
    """Each run rewrites the block a reader may hold mapped (the tail): the
    reader's next read still sees the new records, bit-exact."""
    path = tmp_path / "d.gs"
    rng = np.random.default_rng(7)
    with gradstore.open(path, "w", segment_size=1 << 20, direct_io=True) as gs:
        reader = gradstore.open(path)
        written = {}
        for s in range(30):
            new = write_buckets(gs, rng, 1, start=s)
            written.update(new)
            reader.refresh()
            for key, want in new.items():   # maps the tail block before the next run rewrites it
                assert same(reader.read(key, verify=True), want), key
        for key, want in written.items():
            assert same(reader.read(key, verify=True), want), key
        reader.close()
    check_all(path, written)


def test_bad_staging_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4096"):
        direct.DirectSegmentWriter(tmp_path, fmt.STREAM_DATA, SEGMENT, False, stage=5000)
