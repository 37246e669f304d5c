"""Records written in runs: one pwritev per run, checksums from the hash
thread running ahead of the writer, runs split at segment borders, and a
failed run cut back whole."""
from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest

import gradstore
from gradstore import format as fmt
from gradstore import fileio, hashrun


def bucket(n: int, sizes, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"m{i}.weight": rng.standard_normal(sizes[i % len(sizes)]).astype(np.float32)
            for i in range(n)}


def check_store(path, expected: dict[str, np.ndarray]) -> None:
    """Every key bit-exact, its stored checksum that of its bytes, verify clean."""
    with gradstore.open(path) as gs:
        assert sorted(gs.keys()) == sorted(expected)
        for key, a in expected.items():
            got = gs.read(key, verify=True)
            assert got.dtype == a.dtype and got.shape == a.shape
            assert got.tobytes() == a.tobytes()
            assert gs.entry(key).checksum == fmt.xxh3(a.tobytes())
        assert gs.verify() == []


def segment_sizes(path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (path / "main").glob("*.bin")}


def test_a_bucket_of_more_buffers_than_one_call_takes(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_IOV_MAX", 7)
    widths = []
    real = os.pwritev

    def pwritev(fd, buffers, offset):
        widths.append(len(buffers))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", pwritev)
    tensors = bucket(40, [0, 1, 3, 17, 64])
    with gradstore.open(tmp_path / "s.gs", "w") as gs:
        gs.write_bucket("R_0_E_0_S_0_B_0", tensors)
    assert max(widths) == 7 and len(widths) > 10
    check_store(tmp_path / "s.gs", {f"R_0_E_0_S_0_B_0/{m}": a for m, a in tensors.items()})


def test_short_writes_are_continued_across_buffers(tmp_path, monkeypatch):
    real = os.pwritev

    def short(fd, buffers, offset):  # the kernel may write less than asked
        first = memoryview(buffers[0])[:37]
        return real(fd, [first], offset)

    tensors = bucket(9, [5, 100, 3000])
    monkeypatch.setattr(hashrun, "HASH_PIECE", 4096)
    monkeypatch.setattr(hashrun, "PARALLEL_HASH", 1)
    monkeypatch.setattr(os, "pwritev", short)
    with gradstore.open(tmp_path / "s.gs", "w") as gs:
        gs.write_bucket("B", tensors)
    monkeypatch.setattr(os, "pwritev", real)
    check_store(tmp_path / "s.gs", {f"B/{m}": a for m, a in tensors.items()})


@pytest.mark.parametrize("piece", [64, 4096, 1 << 20])
def test_payloads_hashed_in_pieces_by_the_hash_thread(tmp_path, monkeypatch, piece):
    """Pieces that split payloads, pieces that hold several, empty payloads among them."""
    monkeypatch.setattr(hashrun, "HASH_PIECE", piece)
    monkeypatch.setattr(hashrun, "PARALLEL_HASH", 1)
    hashed = []
    real = hashrun._hash_ahead
    monkeypatch.setattr(hashrun, "_hash_ahead", lambda p, s, w, h: hashed.append(len(s)) or real(p, s, w, h))
    tensors = bucket(12, [0, 1, 15, 1000, 12345, 70000])
    path = tmp_path / "s.gs"
    with gradstore.open(path, "w") as gs:
        gs.write_bucket("R_0_E_0_S_0_B_0", tensors)
        gs.write("alone", np.arange(50000, dtype=np.int16))
    assert hashed == [12, 1]  # both went the hash thread's way
    expected = {f"R_0_E_0_S_0_B_0/{m}": a for m, a in tensors.items()}
    expected["alone"] = np.arange(50000, dtype=np.int16)
    check_store(path, expected)
    # The headers written after the payloads are whole: a rebuild from the segments finds all.
    (path / "main" / "index.snap").unlink(missing_ok=True)
    for log in (path / "main").glob("*.log"):
        log.unlink()
    gradstore.repair(path)
    check_store(path, expected)


def test_pieces_end_on_file_offsets_that_are_multiples_of_their_size(tmp_path, monkeypatch):
    """The ramp (4 KiB, 8 KiB, ...) then 32 KiB pieces, each ending on a multiple
    of its size, whatever the run's start: the page cache gets whole folios."""
    monkeypatch.setattr(hashrun, "HASH_FIRST", 4096)
    monkeypatch.setattr(hashrun, "HASH_PIECE", 32768)
    monkeypatch.setattr(hashrun, "PARALLEL_HASH", 1)
    real, writes = os.pwritev, []

    def pwritev(fd, buffers, offset):
        writes.append((offset, sum(len(memoryview(b).cast("B")) for b in buffers)))
        return real(fd, buffers, offset)

    tensors = bucket(7, [30001, 5, 20000])  # odd sizes: records start anywhere 64-aligned
    with gradstore.open(tmp_path / "s.gs", "w") as gs:
        gs.write("first", np.zeros(77, np.float32))  # the run starts past a record
        monkeypatch.setattr(os, "pwritev", pwritev)
        entries = gs.write_bucket("R_0_E_0_S_0_B_0", tensors)
        monkeypatch.setattr(os, "pwritev", real)
    start = entries[0].offset
    end = entries[-1].offset + fmt.align(entries[-1].header_len + entries[-1].nbytes)
    pieces = writes[:-len(entries)]  # then one write per header
    assert [w[0] for w in writes[-len(entries):]] == [e.offset for e in entries]
    assert pieces[0][0] == start and sum(n for _, n in pieces) == end - start
    assert all(a + n == b for (a, n), (b, _) in zip(pieces, pieces[1:]))  # contiguous, in order
    step = 4096
    for off, n in pieces[:-1]:
        assert (off + n) % step == 0 and 0 < n <= step, (pieces, step)
        step = min(2 * step, 32768)
    assert sum(n == 32768 for _, n in pieces) >= 4  # the steady state: whole aligned pieces
    assert pieces[-1][0] + pieces[-1][1] == end
    check_store(tmp_path / "s.gs", dict({f"R_0_E_0_S_0_B_0/{m}": a for m, a in tensors.items()},
                                        first=np.zeros(77, np.float32)))


def test_a_bucket_larger_than_a_segment_is_split_at_segment_borders(tmp_path):
    tensors = bucket(20, [3000])  # 12 KB each, 32 KiB segments: two or so per segment
    path = tmp_path / "s.gs"
    with gradstore.open(path, "w", segment_size="32KiB") as gs:
        entries = gs.write_bucket("R_0_E_0_S_0_B_0", tensors)
    seqs = [e.seq for e in entries]
    assert seqs == sorted(seqs) and len(set(seqs)) >= 6
    assert all(size <= 32 * 1024 for size in segment_sizes(path).values())
    check_store(path, {f"R_0_E_0_S_0_B_0/{m}": a for m, a in tensors.items()})


@pytest.mark.parametrize("big, fail_at", [(False, 1), (True, 1), (True, 3)])
def test_a_failed_run_is_cut_back_whole(tmp_path, monkeypatch, big, fail_at):
    """Disk full in the middle of a bucket: none of it is stored, and the store goes on.

    A small run is one pwritev; a big one (hashed by the hash thread) is
    several, and the third fails after two pieces landed.
    """
    path = tmp_path / "s.gs"
    first = {"R_0_E_0_S_0_B_0/w": np.arange(1000, dtype=np.float32)}
    with gradstore.open(path, "w") as gs:
        gs.write("R_0_E_0_S_0_B_0/w", first["R_0_E_0_S_0_B_0/w"])
        before = segment_sizes(path)
        if big:
            monkeypatch.setattr(hashrun, "HASH_PIECE", 8192)
            monkeypatch.setattr(hashrun, "PARALLEL_HASH", 1)
        real, calls = os.pwritev, []

        def failing(fd, buffers, offset):
            calls.append(offset)
            if len(calls) == fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, buffers, offset)

        monkeypatch.setattr(os, "pwritev", failing)
        tensors = bucket(6, [100, 5000])
        with pytest.raises(OSError, match="No space"):
            gs.write_bucket("R_0_E_0_S_1_B_0", tensors)
        monkeypatch.setattr(os, "pwritev", real)
        assert len(calls) == fail_at  # the fault hit the run, not something after it
        assert segment_sizes(path) == before
        assert gs.keys() == ["R_0_E_0_S_0_B_0/w"]
        gs.write_bucket("R_0_E_0_S_2_B_0", tensors)
    expected = dict(first, **{f"R_0_E_0_S_2_B_0/{m}": a for m, a in tensors.items()})
    check_store(path, expected)


def test_a_failed_log_write_cuts_the_run_back(tmp_path, monkeypatch):
    path = tmp_path / "s.gs"
    with gradstore.open(path, "w") as gs:
        gs.write("a", np.ones(10, np.float32))
        before = segment_sizes(path)
        real = os.writev

        def failing(fd, buffers):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "writev", failing)
        with pytest.raises(OSError, match="Input/output"):
            gs.write_bucket("R_0_E_0_S_0_B_0", bucket(4, [10, 20000]))
        monkeypatch.setattr(os, "writev", real)
        assert segment_sizes(path) == before
        assert gs.keys() == ["a"]
    check_store(path, {"a": np.ones(10, np.float32)})


def test_the_hash_thread_runs_one_piece_ahead_of_the_writer(tmp_path, monkeypatch):
    """Piece k is written only once it is hashed, and piece k + 2 is hashed only
    once piece k is written: the hash reads memory, the write reads the cache."""
    monkeypatch.setattr(hashrun, "HASH_PIECE", 4096)
    monkeypatch.setattr(hashrun, "PARALLEL_HASH", 1)
    events: list[str] = []  # list.append is atomic: the order is the order things happened

    class Logged:
        def __init__(self, q, name):
            self.q, self.name = q, name

        def get(self):
            v = self.q.get()
            events.append(f"{self.name}.get")
            return v

        def put(self, v):
            events.append(f"{self.name}.put" if v else f"{self.name}.end")
            self.q.put(v)

    real_hash = hashrun._hash_ahead
    monkeypatch.setattr(hashrun, "_hash_ahead", lambda p, s, w, h: real_hash(p, s, Logged(w, "written"),
                                                                             Logged(h, "hashed")))
    real_write = os.pwritev

    def pwritev(fd, buffers, offset):
        events.append("write")
        n = real_write(fd, buffers, offset)
        events.append("written")
        return n

    monkeypatch.setattr(os, "pwritev", pwritev)
    tensors = bucket(5, [7000, 300])
    with gradstore.open(tmp_path / "s.gs", "w") as gs:
        gs.write("first", np.zeros(1))  # starts the segment (a write of its header)
        events.clear()
        gs.write_bucket("R_0_E_0_S_0_B_0", tensors)
    monkeypatch.setattr(os, "pwritev", real_write)
    pieces = events.count("hashed.put") + 1  # the writer hashes the first piece itself
    assert pieces >= 8
    writes = hashes = 0
    for ev in events:  # piece k goes out once k + 1 pieces are hashed
        if ev == "hashed.put":
            hashes += 1
        elif ev == "write" and writes < pieces:  # after the pieces come the headers
            assert hashes + 1 >= writes + 1, events
            writes += 1
    gets = done = 0
    for ev in events:  # piece j is hashed once j - 1 - HASH_AHEAD pieces are written
        if ev == "written":
            done += 1
        elif ev == "written.get":
            assert done >= gets + 1 - hashrun.HASH_AHEAD, events
            gets += 1
    assert gets == pieces - 1
    expected = {f"R_0_E_0_S_0_B_0/{m}": a for m, a in tensors.items()}
    check_store(tmp_path / "s.gs", dict(expected, first=np.zeros(1)))


def test_a_failing_hash_thread_fails_the_run_without_hanging(tmp_path, monkeypatch):
    path = tmp_path / "s.gs"
    monkeypatch.setattr(hashrun, "HASH_PIECE", 4096)
    monkeypatch.setattr(hashrun, "PARALLEL_HASH", 1)
    real = hashrun.xxhash.xxh3_64
    updates = []

    class Failing:
        def __init__(self):
            self.state = real()

        def update(self, view):
            updates.append(len(view))
            if len(updates) == 4:
                raise MemoryError("hash state lost")
            self.state.update(view)

        def intdigest(self):
            return self.state.intdigest()

    with gradstore.open(path, "w") as gs:
        gs.write("a", np.ones(10, np.float32))
        before = segment_sizes(path)
        monkeypatch.setattr(hashrun.xxhash, "xxh3_64", Failing)
        outcome: list = []

        def attempt():
            try:
                gs.write_bucket("R_0_E_0_S_0_B_0", bucket(6, [5000]))
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

        t = threading.Thread(target=attempt, daemon=True)
        t.start()
        t.join(20)
        assert not t.is_alive(), "the writer waits forever for a piece the hash thread never hashes"
        monkeypatch.setattr(hashrun.xxhash, "xxh3_64", real)
        assert len(outcome) == 1 and isinstance(outcome[0], MemoryError)
        assert segment_sizes(path) == before
        assert gs.keys() == ["a"]
        tensors = bucket(6, [5000], seed=1)
        gs.write_bucket("R_0_E_0_S_1_B_0", tensors)  # the hash thread is free again
    expected = {"a": np.ones(10, np.float32), **{f"R_0_E_0_S_1_B_0/{m}": a for m, a in tensors.items()}}
    check_store(path, expected)
