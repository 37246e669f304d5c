"""Damage and resource faults never lose or falsify data (issue: hardening).

Each test stands for a finding: damaged index logs deleting intact records,
repair resurrecting stale values or indexing phantom records, crafted
metadata crashing readers, buckets half-committed on a full disk, and ranks
racing to create one store.
"""
from __future__ import annotations

import errno
import fcntl
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest

import gradstore
from gradstore import format as fmt
from gradstore.segment import SegmentWriter


def bits(a) -> bytes:
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def write_many(path, n=40, **kw) -> dict[str, np.ndarray]:
    truth = {}
    with gradstore.open(path, "a", **kw) as gs:
        for i in range(n):
            truth[f"R_0_E_0_S_{i}_B_0/w"] = np.full(50 + i, i, np.float32)
            gs.write(f"R_0_E_0_S_{i}_B_0/w", truth[f"R_0_E_0_S_{i}_B_0/w"])
    return truth


def verified(gs, key):
    return gs.read(key, verify=True)


def assert_exact(path, truth) -> None:
    with gradstore.open(path) as gs:
        assert set(gs.keys()) == set(truth)
        for k, v in truth.items():
            assert bits(verified(gs, k)) == bits(v), k
        assert gs.verify() == []


def newest_log(path) -> Path:
    return sorted((Path(path) / "main").glob("index-*.log"))[-1]


def log_entry_offsets(log: Path) -> list[int]:
    data = log.read_bytes()
    pos, out = fmt.LOG_HEADER_SIZE, []
    while pos + fmt.LOG_FRAME.size <= len(data):
        n, _ = fmt.LOG_FRAME.unpack_from(data, pos)
        out.append(pos)
        pos += fmt.LOG_FRAME.size + n
    return out


# -- 1. index-log damage never deletes intact records ---------------------------------


@pytest.mark.parametrize("damage", ["length-bit", "truncate-300", "truncate-mid-entry"])
@pytest.mark.parametrize("then", ["open-a", "repair", "read"])
def test_log_damage_never_deletes_intact_records(tmp_path, damage, then):
    path = tmp_path / "s.gs"
    truth = write_many(path)
    log = newest_log(path)
    data = bytearray(log.read_bytes())
    offsets = log_entry_offsets(log)
    assert len(offsets) >= 40  # the entries are in the log, not only in a snapshot
    if damage == "length-bit":
        data[offsets[10] + 2] ^= 0x01  # entry 10's body length grows by 64 KiB: looks torn
    elif damage == "truncate-300":
        del data[-300:]
    else:
        del data[offsets[20] + 5:]
    log.write_bytes(bytes(data))
    seg = path / "main" / "data-000000.bin"
    size = seg.stat().st_size
    if then == "open-a":
        with gradstore.open(path, "a") as gs:
            assert set(gs.keys()) == set(truth)
        assert seg.stat().st_size == size  # nothing cut
    elif then == "repair":
        assert sum(gradstore.repair(path).values()) == len(truth)
    else:
        with gradstore.open(path) as gs:  # a reader may see less, but changes nothing
            assert set(gs.keys()) <= set(truth)
        with gradstore.open(path, "a"):
            pass
    assert_exact(path, truth)
    with gradstore.open(path, "a") as gs:  # and it takes new writes after the old ones
        gs.write("after", np.arange(3.0))
    assert_exact(path, {**truth, "after": np.arange(3.0)})


# -- 2. repair never brings back an overwritten value -----------------------------------


def _overwritten(path, segment_size=None):
    old, new = np.zeros(1500, np.float32), np.ones(1500, np.float32)  # larger than a 4 KiB segment
    with gradstore.open(path, "a", segment_size=segment_size) as gs:
        gs.write("w", old)
        gs.write("other", np.arange(10.0))
        gs.write("w", new, overwrite=True)
        e = gs.entry("w")
    return old, new, e


@pytest.mark.parametrize("damage", ["header", "segment-deleted"])
def test_repair_never_resurrects_an_overwritten_value(tmp_path, damage):
    path = tmp_path / "s.gs"
    old, new, e = _overwritten(path, segment_size=4096 if damage == "segment-deleted" else None)
    seg = path / e.segment
    if damage == "header":
        with open(seg, "r+b") as f:
            f.seek(e.offset + fmt.REC_FIXED.size + 20)
            f.write(b"\xff")
    else:
        assert e.seq > 0  # the newest version sits in a segment of its own
        seg.unlink()
    result = gradstore.repair(path)
    assert [p.key for p in result.lost] == ["w"]
    with gradstore.open(path) as gs:
        assert "w" in gs
        problems = gs.verify()
        assert [p.key for p in problems] == ["w"]
        if damage == "header":  # the payload itself is intact and checks out: the new value
            assert bits(verified(gs, "w")) == bits(new)
        else:
            with pytest.raises(gradstore.GradstoreError, match="'w'"):
                verified(gs, "w")
        assert bits(verified(gs, "other")) == bits(np.arange(10.0))
    # the command says so, names the key, and exits non-zero
    proc = subprocess.run([sys.executable, "-m", "gradstore", "repair", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and ": w: newest version" in proc.stdout and "Traceback" not in proc.stderr
    # a new write of the key heals it; the damaged bytes are reported until compaction drops them
    with gradstore.open(path, "a") as gs:
        gs.write("w", new, overwrite=True)
        assert bits(verified(gs, "w")) == bits(new)
        assert all(p.key == "(unreadable record)" for p in gs.verify())
        gs.compact()
        assert gs.verify() == [] and bits(verified(gs, "w")) == bits(new)


# -- 3. no phantom records from inside a payload ------------------------------------


def test_rebuild_never_indexes_records_inside_a_payload(tmp_path):
    inner = tmp_path / "inner.gs"
    with gradstore.open(inner, "a") as gs:
        for i in range(5):
            gs.write(f"phantom/{i}", np.full(30, i, np.float32))
    dump = np.frombuffer((inner / "main" / "data-000000.bin").read_bytes(), np.uint8)
    path = tmp_path / "s.gs"
    with gradstore.open(path, "a") as gs:
        gs.write("before", np.arange(4.0))
        gs.write("dump", dump)
        gs.write("after", np.arange(5.0))
        e = gs.entry("dump")
    with open(path / e.segment, "r+b") as f:  # damage the container's header
        f.seek(e.offset + 8)
        f.write(b"\x00\x00\x00\x00")
    for f in (path / "main").glob("index*"):
        f.unlink()  # no index: the scan alone decides
    with gradstore.open(path) as gs:
        assert sorted(gs.keys()) == ["after", "before"]
    gradstore.repair(path)
    with gradstore.open(path) as gs:
        assert sorted(gs.keys()) == ["after", "before"]
        problems = gs.verify()  # the damaged container is reported where it lies, no phantom as a key
        assert problems and problems[0].offset == e.offset
        assert all(p.key == "(unreadable record)" for p in problems)


# -- 4. crafted or damaged metadata --------------------------------------------------------


BAD_META = {
    "no-dtype": {"key": "bad", "shape": [4], "time": 1},
    "unknown-dtype": {"key": "bad", "dtype": "complex64", "shape": [4], "time": 1},
    "negative-dim": {"key": "bad", "dtype": "uint8", "shape": [-4], "time": 1},
    "300-dims": {"key": "bad", "dtype": "uint8", "shape": [1] * 300, "time": 1},
    "huge-time": {"key": "bad", "dtype": "uint8", "shape": [16], "time": 2**64 - 1},
    "int-key": {"key": 7, "dtype": "uint8", "shape": [16], "time": 1},
    "empty-key": {"key": "", "dtype": "uint8", "shape": [16], "time": 1},
    "nul-key": {"key": "a\0b", "dtype": "uint8", "shape": [16], "time": 1},
    "shape-larger": {"key": "bad", "dtype": "float32", "shape": [1000], "time": 1},
    "float-dim": {"key": "bad", "dtype": "uint8", "shape": [16.0], "time": 1},
}


def _append_crafted(path, meta: dict, with_log: bool) -> None:
    """A record with a correct header checksum but meta no writer would produce."""
    ns = path / "main"
    seg = ns / "data-000000.bin"
    payload = bytes(range(16))
    offset = seg.stat().st_size
    mb = msgpack.packb(meta, use_bin_type=True)
    header = fmt.record_header(fmt.KIND_TENSOR, mb, len(payload), fmt.xxh3(payload),
                               fmt.Place(10_000, 0, offset, 0, 1))
    rec = header + payload
    with open(seg, "ab") as f:
        f.write(rec + bytes(fmt.align(len(rec)) - len(rec)))
    if with_log:
        body = [1, meta.get("key"), 0, offset, len(header), len(payload), meta.get("dtype"),
                meta.get("shape"), fmt.xxh3(payload), meta.get("time"), None, 10_000]
        with open(newest_log(path), "ab") as f:
            f.write(fmt.pack_log_entry(body))


@pytest.mark.parametrize("with_log", [False, True], ids=["segment-only", "segment-and-log"])
@pytest.mark.parametrize("bad", sorted(BAD_META))
def test_crafted_metadata_is_skipped_and_never_crashes(tmp_path, bad, with_log):
    path = tmp_path / "s.gs"
    truth = write_many(path, n=5)
    _append_crafted(path, BAD_META[bad], with_log)
    with gradstore.open(path) as gs:
        assert set(gs.keys()) == set(truth)
    with gradstore.open(path, "a") as gs:
        assert set(gs.keys()) == set(truth)
    gradstore.repair(path)
    assert_exact(path, truth)


# -- 5. a bucket is committed whole or not at all ------------------------------------


def test_a_bucket_spanning_segments_that_fails_commits_nothing(tmp_path, monkeypatch):
    path = tmp_path / "s.gs"
    bucket = {f"m{i}": np.full(600, i, np.float32) for i in range(8)}  # ~2.5 KB each, 4 KiB segments
    with gradstore.open(path, "a", segment_size=4096) as gs:
        gs.write("first", np.arange(10.0))
        real = os.pwritev
        calls = []

        def full(fd, buffers, offset):
            calls.append(offset)
            if len(calls) == 3:  # the third segment of the bucket's run
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, buffers, offset)

        monkeypatch.setattr(os, "pwritev", full)
        with pytest.raises(gradstore.WriteError) as exc:
            gs.write_bucket("R_0_E_0_S_1_B_0", bucket)
        monkeypatch.setattr(os, "pwritev", real)
        assert exc.value.errno == errno.ENOSPC and isinstance(exc.value, OSError)
        msg = str(exc.value)
        assert "R_0_E_0_S_1_B_0/m" in msg and "data-0000" in msg and "none committed" in msg
        assert gs.keys() == ["first"]
        gs.write_bucket("R_0_E_0_S_1_B_0", bucket)  # a retry is no KeyExistsError
    with gradstore.open(path) as gs:
        assert len(gs.keys()) == 9 and gs.verify() == []
        assert bits(gs["R_0_E_0_S_1_B_0/m7"]) == bits(bucket["m7"])


@pytest.mark.parametrize("then", ["open-a", "repair"])
def test_sigkill_between_the_segments_of_a_bucket_commits_none_of_it(tmp_path, then):
    path = tmp_path / "s.gs"
    bucket = {f"m{i}": np.full(600, i, np.float32) for i in range(8)}
    pid = os.fork()
    if pid == 0:
        try:
            gs = gradstore.open(path, "a", segment_size=4096)
            gs.write("first", np.arange(10.0))
            real = SegmentWriter._start
            started = []

            def start(self, seq):
                started.append(seq)
                if len(started) == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(self, seq)

            SegmentWriter._start = start
            gs.write_bucket("R_0_E_0_S_1_B_0", bucket)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if then == "repair":
        gradstore.repair(path)
    with gradstore.open(path, "a", segment_size=4096) as gs:
        assert gs.keys() == ["first"]
        gs.write_bucket("R_0_E_0_S_1_B_0", bucket)
    with gradstore.open(path) as gs:
        assert len(gs.keys()) == 9 and gs.verify() == []


# -- 8. ranks creating one store at the same moment ------------------------------------


def _create_rank(path, rank, barrier, out):
    try:
        barrier.wait()
        with gradstore.open(path, "a", rank=rank) as gs:
            gs.write(f"R_{rank}_E_0_S_0_B_0/w", np.arange(4.0))
        out.put((rank, "ok"))
    except Exception as exc:  # reported to the parent
        out.put((rank, f"{type(exc).__name__}: {exc}"))


def test_ranks_creating_one_store_at_the_same_moment_all_succeed(tmp_path):
    ctx = mp.get_context("fork")
    for attempt in range(15):
        path = tmp_path / f"s{attempt}.gs"
        barrier, out = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_create_rank, args=(path, r, barrier, out)) for r in range(4)]
        for p in procs:
            p.start()
        results = dict(out.get(timeout=60) for _ in procs)
        for p in procs:
            p.join()
        assert results == {r: "ok" for r in range(4)}, results
        with gradstore.open(path) as gs:
            assert len(gs.keys()) == 4


def test_locked_error_names_the_holder_even_just_after_it_locked(tmp_path):
    path = tmp_path / "s.gs"
    with gradstore.open(path, "a"):
        pass
    fd = os.open(path / "main" / "LOCK", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)  # a holder that has locked but not yet written who it is
    later = threading.Timer(0.02, lambda: os.pwrite(fd, b"pid=4242 host=elsewhere\n", 0))
    later.start()
    try:
        with pytest.raises(gradstore.LockedError, match="pid=4242 host=elsewhere"):
            gradstore.open(path, "a")
    finally:
        later.join()
        os.close(fd)


@pytest.mark.parametrize("then", ["open-a", "repair"])
def test_every_cut_of_an_uncommitted_bucket_leaves_all_of_it_or_none(tmp_path, then):
    """A crash between a bucket's records and its log entry can leave the
    segment cut at any byte.  Recovery (from the log, or a rebuild without
    any index) keeps the whole bucket or none of it, and never the records
    written before it."""
    import shutil
    src = tmp_path / "src.gs"
    with gradstore.open(src, "a") as gs:
        gs.write("a", np.arange(10.0))
        a_end = gs.entry("a").end
        gs.write_bucket("B", {f"m{i}": np.full(100, i, np.float32) for i in range(4)})
    size = (src / "main" / "data-000000.bin").stat().st_size
    outcomes = set()
    for cut in range(size, a_end - 1, -11):
        q = tmp_path / f"c{cut}.gs"
        shutil.copytree(src, q)
        os.truncate(q / "main" / "data-000000.bin", cut)
        if then == "repair":
            for f in (q / "main").glob("index*"):
                f.unlink()
            gradstore.repair(q)
        else:  # the bucket's log entry never made it
            log = newest_log(q)
            data = log.read_bytes()
            log.write_bytes(data[:log_entry_offsets(log)[1]])
            with gradstore.open(q, "a"):
                pass
        with gradstore.open(q) as gs:
            keys = gs.keys()
            assert gs.verify() == []
        bucket = [k for k in keys if k.startswith("B/")]
        assert "a" in keys and len(bucket) in (0, 4), (cut, keys)
        outcomes.add(len(bucket))
        shutil.rmtree(q)
    assert outcomes == {0, 4}


@pytest.mark.parametrize("bad", ["no-dtype", "shape-larger", "nul-key"])
def test_verify_reports_invalid_records_with_segment_and_offset(tmp_path, bad):
    path = tmp_path / "s.gs"
    truth = write_many(path, n=3)
    seg = path / "main" / "data-000000.bin"
    at = seg.stat().st_size
    _append_crafted(path, BAD_META[bad], with_log=False)
    good = np.arange(4, dtype=np.uint8)  # a valid record after it, so it lies among committed ones
    mb = msgpack.packb({"key": "good", "dtype": "uint8", "shape": [4], "time": 1}, use_bin_type=True)
    offset = seg.stat().st_size
    rec = fmt.record_header(fmt.KIND_TENSOR, mb, 4, fmt.xxh3(good.tobytes()),
                            fmt.Place(10_001, 0, offset, 0, 1)) + good.tobytes()
    with open(seg, "ab") as f:
        f.write(rec + bytes(fmt.align(len(rec)) - len(rec)))
    for f in (path / "main").glob("index*"):
        f.unlink()
    for mode in ("r", "a"):
        with gradstore.open(path, mode) as gs:
            assert set(gs.keys()) == set(truth) | {"good"}
            problems = gs.verify()
            assert [(p.segment, p.offset) for p in problems] == [("main/data-000000.bin", at)], problems
            assert "main/data-000000.bin @ " + str(at) in str(problems[0])


def test_verify_of_a_clean_store_reports_nothing_after_overwrites_and_compaction(tmp_path):
    path = tmp_path / "s.gs"
    with gradstore.open(path, "a", segment_size=4096) as gs:
        for i in range(20):
            gs.write(f"k{i % 5}", np.full(100 + i, i, np.float32), overwrite=True)
        assert gs.verify() == []
        gs.compact()
        assert gs.verify() == []


def test_a_store_whose_creation_is_interrupted_leaves_no_directory(tmp_path, monkeypatch):
    """A Ctrl-C (or a full disk) before the marker is in place must not leave a
    directory that is not a store: readers would refuse it."""
    import gradstore.marker as marker
    path = tmp_path / "new.gs"

    def interrupted(tmp, meta):
        raise KeyboardInterrupt

    monkeypatch.setattr(marker, "_write_durably", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gradstore.open(path, "a")
    assert not path.exists()
    monkeypatch.undo()
    with gradstore.open(path, "a") as gs:
        gs.write("k", np.arange(3.0))
    assert gradstore.open(path).keys() == ["k"]
