"""Disk space allocated ahead of a segment's appends, and given back."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import gradstore
from gradstore import fileio, segment

MiB = 1 << 20


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def data_segments(path) -> list:
    return sorted((path / "main").glob("data-*.bin"))


@pytest.fixture
def can_allocate(tmp_path):
    probe = tmp_path / "probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not fileio.reserve_space(fd, 0, MiB):
            pytest.skip("this file system cannot allocate space ahead (fallocate KEEP_SIZE)")
    finally:
        os.close(fd)
        probe.unlink()


def bucket(seed: int, n: int = 4, size: int = 30_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"m{i}.weight": rng.standard_normal(size).astype(np.float32) for i in range(n)}


def test_space_is_allocated_ahead_without_growing_the_file_and_given_back(tmp_path, monkeypatch,
                                                                         can_allocate):
    monkeypatch.setattr(segment, "ALLOCATE_AHEAD", 8 * MiB)
    path = tmp_path / "s.gs"
    tensors = bucket(0)
    with gradstore.open(path, "w") as gs:
        gs.write_bucket("R_0_E_0_S_0_B_0", tensors)
        (seg,) = data_segments(path)
        end = gs.entry("R_0_E_0_S_0_B_0/m3.weight").end
        assert os.stat(seg).st_size == end  # the size is the data's, not the allocation's
        assert allocated(seg) >= 8 * MiB
        with gradstore.open(path) as reader:  # a reader maps exactly the data
            assert reader["R_0_E_0_S_0_B_0/m0.weight"].tobytes() == tensors["m0.weight"].tobytes()
    assert os.stat(seg).st_size == end
    assert allocated(seg) < end + MiB  # closing gave the rest back
    with gradstore.open(path) as gs:
        assert gs.verify() == []
        for m, a in tensors.items():
            assert gs.get(f"R_0_E_0_S_0_B_0/{m}", verify=True).tobytes() == a.tobytes()


def test_allocation_stays_within_the_segment_and_is_given_back_at_rollover(tmp_path, monkeypatch,
                                                                          can_allocate):
    monkeypatch.setattr(segment, "ALLOCATE_AHEAD", 64 * MiB)
    path = tmp_path / "s.gs"
    with gradstore.open(path, "w", segment_size="1MiB") as gs:
        gs.write_bucket("R_0_E_0_S_0_B_0", bucket(0))  # 480 KB
        (first,) = data_segments(path)
        assert MiB <= allocated(first) < MiB + 64 * 1024  # up to the segment size, not 64 MiB
        gs.write_bucket("R_0_E_0_S_1_B_0", bucket(1))  # does not fit: a new segment
        gs.write_bucket("R_0_E_0_S_2_B_0", bucket(2))
        segs = data_segments(path)
        assert len(segs) >= 2
        for seg in segs[:-1]:  # left behind while the writer goes on
            assert allocated(seg) < os.stat(seg).st_size + 64 * 1024
    with gradstore.open(path) as gs:
        assert len(gs) == 12 and gs.verify() == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_killed_writer_leaves_allocated_space_that_the_next_writer_frees(tmp_path, monkeypatch,
                                                                          can_allocate):
    monkeypatch.setattr(segment, "ALLOCATE_AHEAD", 16 * MiB)
    path = tmp_path / "s.gs"
    tensors = bucket(0)
    pid = os.fork()
    if pid == 0:  # the child writes, then dies without closing
        try:
            gs = gradstore.open(path, "w")
            gs.write_bucket("R_0_E_0_S_0_B_0", tensors)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    (seg,) = data_segments(path)
    assert allocated(seg) >= 16 * MiB
    with gradstore.open(path, "a") as gs:  # recovery resumes the segment: its cut frees the rest
        assert allocated(seg) < os.stat(seg).st_size + MiB
        assert sorted(gs.keys()) == sorted(f"R_0_E_0_S_0_B_0/{m}" for m in tensors)
        assert gs.verify() == []


@pytest.mark.parametrize("how", ["missing", "refused"])
def test_writes_go_on_where_space_cannot_be_allocated(tmp_path, monkeypatch, how):
    calls = []

    def refuse(fd, mode, offset, length):
        calls.append(length)
        return -1

    monkeypatch.setattr(fileio, "_fallocate", None if how == "missing" else refuse)
    path = tmp_path / "s.gs"
    tensors = {**bucket(0), "big.weight": np.arange(1 << 19, dtype=np.float32)}  # a hashed run too
    with gradstore.open(path, "w") as gs:
        gs.write_bucket("R_0_E_0_S_0_B_0", tensors)
        gs.write_bucket("R_0_E_0_S_1_B_0", tensors)
        assert gs._writer.writers[1].allocating is False
    assert len(calls) == (0 if how == "missing" else 1)  # asked once, then no more
    with gradstore.open(path) as gs:
        assert gs.verify() == []
        for step in (0, 1):
            for m, a in tensors.items():
                assert gs[f"R_0_E_0_S_{step}_B_0/{m}"].tobytes() == a.tobytes()
