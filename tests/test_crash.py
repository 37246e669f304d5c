"""Crash safety: a writer SIGKILLed anywhere loses no committed record; damage is found.

The writer is tests/crash_writer.py, run in a forked child (or as a script).
It reports each op after it returned; the parent then checks, with the store
opened read-only before recovery and again after recovery in mode "a":
every committed key is present and bit-exact, nothing else is there but the
op in flight, verify() is clean, and the store takes and keeps a new write.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import gradstore

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import crash_writer as cw  # noqa: E402

SEGMENT = 16 * 1024     # small, so records roll over often and large ones sit alone
ROTATE = 20             # the child's namespace.CHECKPOINT_EVERY: a log rotation every ~20 writes
N_OPS = 160
PROBE_KEY = "after-crash/probe"
PROBE = np.arange(1000, dtype=np.float32) * 0.5

# Qualified names of the store's functions, used to place faults. If one is
# renamed, the fault never fires and the test says so.
APPEND = "Store._append"
SEG_APPEND = "SegmentWriter.append_run"
SEG_COPY = "SegmentWriter.append_run"
SEG_START = "SegmentWriter._start"
LOG_APPEND = "LogWriter.append"
CHECKPOINT = "Namespace.checkpoint"
ROTATE_FN = "Namespace._rotate"
CREATE_LOG = "create_log"
WRITE_SNAP = "write_snapshot"
COMPACT = "Namespace.compact"
CLOSE = "Namespace.close"
OPEN = "Namespace.open_write"
REBUILD = "Namespace.rebuild"
DISCARD = "Namespace._discard_uncommitted"
MARKER = "open_marker"


# -- running the writer -------------------------------------------------------------


def fork_writer(plan: dict) -> int:
    """Run ``crash_writer.run(plan)`` in a forked child; its wait status."""
    _, status = os.waitpid(cw.fork(plan), 0)
    return status


def was_killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def base_plan(tmp_path: Path, *, seed: int = 7, rank: int | None = None, n_ops: int = N_OPS,
              name: str = "run") -> dict:
    return {
        "store": str(tmp_path / "crash.gs"),
        "committed": str(tmp_path / f"{name}.committed"),
        "killed_at": str(tmp_path / f"{name}.killed_at"),
        "seed": seed, "n_ops": n_ops, "rank": rank,
        "segment_size": SEGMENT, "checkpoint_every": ROTATE, "checkpoint_on_close": 8,
        "compact_batch": 1,  # one run per copied record, so faults land between copies
    }


def killed_note(plan: dict) -> str:
    try:
        return Path(plan["killed_at"]).read_text()
    except FileNotFoundError:
        return "(no note)"


def expectation(plan: dict) -> tuple[dict[str, int], dict[str, int]]:
    ops = plan.get("ops") or cw.make_ops(plan["seed"], plan["n_ops"], plan.get("rank"))
    return cw.replay(ops, cw.read_committed(plan["committed"]))


# -- the check after a crash ----------------------------------------------------------


def summary(problems: list[str], shown: int = 12) -> str:
    more = f"\n... and {len(problems) - shown} more" if len(problems) > shown else ""
    return f"{len(problems)} problems:\n" + "\n".join(problems[:shown]) + more


def check_recovery(path: str, committed: dict[str, int], inflight: dict[str, int],
                   rank: int | None, note: str = "") -> None:
    """Read-only before recovery, then recovery in "a", a new write, and a final read."""
    where = f" [killed at: {note}]" if note else ""
    state = cw.tree_state(path)
    try:
        with gradstore.open(path, "r") as r:
            problems = cw.content_problems(r, committed, inflight)
            assert not problems, f"read-only open before recovery{where}:\n" + summary(problems)
    except (gradstore.FormatError, FileNotFoundError):
        if committed:  # only a store that was never created may refuse a reader
            raise
    assert cw.tree_state(path) == state, f"a reader changed files{where}"

    with gradstore.open(path, "a", rank=rank) as gs:
        problems = cw.content_problems(gs, committed, inflight)
        assert not problems, f"after recovery{where}:\n" + summary(problems)
        bad = gs.verify()
        assert bad == [], f"verify() after recovery{where}: {bad}"
        gs.write(PROBE_KEY, PROBE, overwrite=True)
    with gradstore.open(path, "r") as r:
        problems = cw.content_problems(r, committed, inflight, extra={PROBE_KEY: PROBE})
        assert not problems, f"after a write following recovery{where}:\n" + summary(problems)
        assert r.verify() == []


def crash_and_check(plan: dict) -> None:
    status = fork_writer(plan)
    assert was_killed(status), (f"the writer was not killed (status {status}): the fault "
                                f"{plan.get('fault') or plan.get('kill_after')} never fired")
    committed, inflight = expectation(plan)
    check_recovery(plan["store"], committed, inflight, plan.get("rank"), killed_note(plan))


# -- crash points -----------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    label: str
    fn: str
    where: tuple = ()
    not_where: tuple = ()
    n: int = 1
    how: str = "before"
    seed: int = 7
    rank: int | None = None

    @property
    def id(self) -> str:
        inner = self.where[-1].split(".")[-1].strip("_") if self.where else "any"
        return f"{self.label}-{inner}-{self.fn.split('|')[0]}-{self.how}-{self.n}"

    def fault(self, plan: dict) -> dict:
        return {"fn": self.fn, "where": list(self.where), "not_where": list(self.not_where),
                "n": self.n, "how": self.how, "killed_at": plan["killed_at"]}


def _record(n, how, seed=7, rank=None):  # a tensor record torn while it is appended
    return Point("record", "pwritev", (APPEND, SEG_APPEND), (SEG_START,), n, how, seed, rank)


def _logentry(n, how, seed=7, rank=None):  # the commit itself torn
    return Point("log-entry", "writev", (APPEND, LOG_APPEND), (REBUILD,), n, how, seed, rank)


POINTS = [
    *[_record(n, how) for n, how in [(1, "before"), (2, "one"), (5, "half"), (9, "allbut1"),
                                     (17, "half"), (28, "one"), (44, "before"), (63, "half"),
                                     (90, "allbut1"), (121, "half")]],
    _record(12, "half", seed=3, rank=2), _record(50, "one", seed=3, rank=2),
    *[_logentry(n, how) for n, how in [(1, "half"), (3, "before"), (6, "one"), (11, "allbut1"),
                                       (24, "half"), (37, "after"), (58, "one"), (85, "half"),
                                       (130, "allbut1")]],
    _logentry(20, "half", seed=3, rank=2),
    # rollover: the next segment torn while its header is written
    *[Point("rollover", "pwritev", (APPEND, SEG_START), (), n, how)
      for n, how in [(1, "before"), (2, "half"), (5, "after"), (13, "one"), (30, "allbut1")]],
    # fsync phases: killed after the record's write, before its log entry (and after the entry)
    *[Point("record-fsync", "fsync", (APPEND, SEG_APPEND), (SEG_START,), n, "before", seed=3)
      for n in (1, 8, 20)],
    *[Point("entry-fsync", "fsync", (APPEND, LOG_APPEND), (), n, how, seed=3)
      for n, how in ((2, "before"), (15, "after"))],
    Point("rollover-fsync", "fsync", (APPEND, SEG_START), (), 3, "after", seed=3),
    # log rotation while writing (snapshot + new log generation)
    Point("rotate", "writev", (APPEND, CREATE_LOG), (), 1, "half"),
    Point("rotate", "replace", (APPEND, CREATE_LOG), (), 2, "before"),
    Point("rotate", "replace", (APPEND, CREATE_LOG), (), 3, "after"),
    Point("rotate", "writev", (APPEND, WRITE_SNAP), (), 1, "half"),
    Point("rotate", "writev", (APPEND, WRITE_SNAP), (), 2, "allbut1"),
    Point("rotate", "fsync", (APPEND, WRITE_SNAP), (), 3, "before"),
    Point("rotate", "replace", (APPEND, WRITE_SNAP), (), 1, "before"),
    Point("rotate", "replace", (APPEND, WRITE_SNAP), (), 4, "after"),
    Point("rotate", "unlink", (APPEND, CHECKPOINT), (), 1, "before"),
    Point("rotate", "unlink", (APPEND, CHECKPOINT), (), 2, "after"),
    Point("rotate", "ftruncate", (APPEND, CHECKPOINT), (), 2, "before"),
    # close: the closing snapshot
    Point("close", "replace", (CLOSE, WRITE_SNAP), (), 1, "after"),
    Point("close", "writev", (CLOSE, WRITE_SNAP), (), 2, "half"),
    Point("close", "fsync", (CLOSE,), (CHECKPOINT,), 2, "before"),
    # compaction: copies, their commits, the snapshot, the removal of old segments
    Point("compact", "pwritev", (COMPACT, SEG_COPY), (SEG_START,), 3, "half"),
    Point("compact", "pwritev", (COMPACT, SEG_COPY), (SEG_START,), 40, "allbut1"),
    Point("compact", "writev", (COMPACT, LOG_APPEND), (), 5, "half"),
    Point("compact", "replace", (COMPACT, WRITE_SNAP), (), 1, "before"),
    Point("compact", "replace", (COMPACT, WRITE_SNAP), (), 2, "after"),
    Point("compact", "unlink", (COMPACT,), (CHECKPOINT,), 1, "before"),
    Point("compact", "unlink", (COMPACT,), (CHECKPOINT,), 12, "after"),
    # creating the store and its namespace
    Point("create", "replace|rename|link", (MARKER,), (), 1, "before"),
    Point("create", "writev", (OPEN, REBUILD, CREATE_LOG), (CHECKPOINT,), 1, "half"),
    Point("create", "replace", (OPEN, REBUILD, WRITE_SNAP), (), 1, "before"),
    # reopening after a clean close: killed while resuming the last segment
    Point("reopen", "ftruncate", (OPEN, "SegmentWriter.resume"), (), 2, "before"),
]


def test_crash_points_are_distinct_and_many():
    ids = [f"{p.id}-s{p.seed}-r{p.rank}" for p in POINTS]
    assert len(set(ids)) == len(ids)
    total = (len(ids) + len(PIECED) + len(KILL_AFTER) + len(DELAY_SEEDS) + len(DOUBLE)
             + len(REBUILD_POINTS))
    assert total >= 50


@pytest.mark.parametrize("point", POINTS, ids=[f"{p.id}-s{p.seed}" for p in POINTS])
def test_sigkill_inside_the_commit_protocol(fast_tmp, point):
    plan = base_plan(fast_tmp, seed=point.seed, rank=point.rank)
    plan["fault"] = point.fault(plan)
    crash_and_check(plan)


# Large runs: zeroed headers, payload pieces, then the headers, each its own pwritev.
PIECED = [(2, "half"), (3, "before"), (7, "allbut1"), (15, "after"), (30, "one"), (61, "half"),
          (97, "after")]


@pytest.mark.parametrize("n,how", PIECED, ids=[f"pwritev-{how}-{n}" for n, how in PIECED])
def test_sigkill_inside_a_run_written_in_pieces(fast_tmp, n, how):
    plan = base_plan(fast_tmp, seed=11)
    plan["hash_piece"] = 256
    plan["fault"] = _record(n, how).fault(plan)
    crash_and_check(plan)


KILL_AFTER = [1, 2, 4, 9, 16, 31, 55, 88, 140]


@pytest.mark.parametrize("n", KILL_AFTER)
def test_sigkill_after_n_committed_ops(fast_tmp, n):
    plan = base_plan(fast_tmp, seed=100 + n, rank=1 if n % 2 else None)
    plan["kill_after"] = n
    crash_and_check(plan)


DELAY_SEEDS = [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("seed", DELAY_SEEDS)
def test_sigkill_at_a_random_moment(fast_tmp, seed):
    """The script in a real subprocess, killed from outside after a random delay."""
    delay = random.Random(seed).uniform(0.0, 0.12)
    plan = base_plan(fast_tmp, seed=200 + seed, n_ops=5000)
    if seed % 2:
        plan["checkpoint_every"] = None  # the library's own rotation schedule
    kill_at_random(plan, fast_tmp / "plan.json", delay)


def kill_at_random(plan: dict, plan_path: Path, delay: float) -> None:
    """Run the plan's writer as a script, SIGKILL it ``delay`` s after its third
    op returned, and check the store."""
    plan_path.write_text(json.dumps(plan))
    env = dict(os.environ, PYTHONPATH=str(Path(gradstore.__file__).parent.parent))
    proc = subprocess.Popen([sys.executable, str(HERE / "crash_writer.py"), str(plan_path)],
                            env=env)
    try:
        deadline = time.monotonic() + 60
        while cw.read_committed(plan["committed"]) < 3:  # wait until it writes
            assert proc.poll() is None, "the writer died before writing"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    committed, inflight = expectation(plan)
    assert len(committed) > 0
    check_recovery(plan["store"], committed, inflight, plan.get("rank"), f"{delay * 1000:.0f} ms in")


# -- a second crash during recovery, and crashes during a rebuild ------------------------

# (first kill, second kill during the next open)
DOUBLE = [
    (Point("record", "pwritev", (APPEND, SEG_APPEND), (SEG_START,), 20, "half"),
     Point("recover", "ftruncate", (OPEN, "LogWriter.__init__"), (), 1, "before")),
    (Point("record", "pwritev", (APPEND, SEG_APPEND), (SEG_START,), 20, "half"),
     Point("recover", "ftruncate", (OPEN, "SegmentWriter.resume"), (), 1, "before")),
    (Point("log-entry", "writev", (APPEND, LOG_APPEND), (), 30, "half"),
     Point("recover", "ftruncate", (OPEN, "LogWriter.__init__"), (), 1, "after")),
    (Point("rollover", "pwritev", (APPEND, SEG_START), (), 6, "after"),
     Point("recover", "unlink", (OPEN, DISCARD), (), 1, "before")),
    (Point("rotate", "replace", (APPEND, WRITE_SNAP), (), 2, "before"),
     Point("recover", "ftruncate", (OPEN,), (), 2, "after")),
]


@pytest.mark.parametrize("first,second", DOUBLE, ids=[f"{a.id}+{b.id}" for a, b in DOUBLE])
def test_sigkill_again_during_recovery(fast_tmp, first, second):
    plan = base_plan(fast_tmp)
    plan["fault"] = first.fault(plan)
    assert was_killed(fork_writer(plan))
    committed, inflight = expectation(plan)
    again = base_plan(fast_tmp, name="recover")
    again["ops"] = [["open", {"fsync": False}], ["close"]]
    again["fault"] = second.fault(again)
    status = fork_writer(again)
    assert was_killed(status), f"the second fault {second} never fired"
    check_recovery(plan["store"], committed, inflight, None, killed_note(again))


REBUILD_POINTS = [
    Point("rebuild", "writev", (REBUILD, ROTATE_FN, CREATE_LOG), (), 1, "before"),
    Point("rebuild", "replace", (REBUILD, ROTATE_FN, CREATE_LOG), (), 1, "after"),
    Point("rebuild", "writev", (REBUILD, ROTATE_FN, WRITE_SNAP), (), 1, "half"),
    Point("rebuild", "replace", (REBUILD, ROTATE_FN, WRITE_SNAP), (), 1, "before"),
    Point("rebuild", "replace", (REBUILD, ROTATE_FN, WRITE_SNAP), (), 1, "after"),
]


@pytest.mark.parametrize("point", REBUILD_POINTS, ids=[p.id for p in REBUILD_POINTS])
def test_sigkill_while_rebuilding_a_deleted_index(fast_tmp, point):
    """The index files are gone; the writer rebuilding them from the segments dies."""
    plan = base_plan(fast_tmp, n_ops=60)
    assert fork_writer(plan) == 0
    committed, inflight = expectation(plan)
    assert not inflight and len(committed) > 40
    for f in (fast_tmp / "crash.gs" / "main").iterdir():
        if f.name.startswith("index"):
            f.unlink()
    again = base_plan(fast_tmp, name="rebuild")
    again["ops"] = [["open", {"fsync": False}], ["close"]]
    again["fault"] = point.fault(again)
    assert was_killed(fork_writer(again)), f"the fault {point} never fired"
    check_recovery(plan["store"], committed, inflight, None, killed_note(again))


# -- a write that fails (no crash) must not spoil the next one ------------------------------


@pytest.mark.parametrize("where", [SEG_APPEND, LOG_APPEND])
def test_failed_write_leaves_the_store_writable(fast_tmp, monkeypatch, where):
    """ENOSPC half-way through a record or its log entry: write() raises, the next write is good."""
    import errno

    real = {"writev": os.writev, "pwritev": os.pwritev}
    armed = [True]

    def failing(fn):
        def write(fd, buffers, *offset):
            names = cw._stack_names()
            if armed[0] and where in names and APPEND in names:
                armed[0] = False
                data = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
                if offset:
                    os.pwrite(fd, data[:len(data) // 2], offset[0])
                else:
                    os.write(fd, data[:len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return real[fn](fd, buffers, *offset)
        return write

    path = fast_tmp / "full.gs"
    a, b, c = (np.full(300, i, np.float32) for i in range(3))
    with gradstore.open(path, "a") as gs:
        gs.write("a", a)
        for fn in real:
            monkeypatch.setattr(os, fn, failing(fn))
        with pytest.raises(OSError):
            gs.write("b", b)
        for fn, f in real.items():
            monkeypatch.setattr(os, fn, f)
        assert "b" not in gs
        gs.write("c", c)
        assert cw.same(gs.read("c", verify=True), c)
    with gradstore.open(path, "r") as r:
        assert sorted(r.keys()) == ["a", "c"]
        assert r.verify() == []
        assert cw.same(r.read("a", verify=True), a) and cw.same(r.read("c", verify=True), c)


# -- damage: bit flips, lost or damaged index files -------------------------------------------


@pytest.fixture(scope="module")
def template_store(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A store with two namespaces (main and r1) written by writer processes, closed cleanly."""
    tmp_path, cleanup = cw.scratch_dir(tmp_path_factory.mktemp("template"))
    truth = {}
    for rank, seed in ((None, 11), (1, 12)):
        plan = base_plan(tmp_path, seed=seed, rank=rank, n_ops=70, name=f"w{rank}")
        assert fork_writer(plan) == 0
        committed, _ = expectation(plan)
        truth.update({k: cw.expected(k, v) for k, v in committed.items()})
    yield tmp_path / "crash.gs", truth
    cleanup()


@pytest.fixture
def written_store(template_store, fast_tmp) -> tuple[str, dict[str, np.ndarray]]:
    """A fresh copy of the template store, to damage."""
    src, truth = template_store
    shutil.copytree(src, fast_tmp / "copy.gs")
    return str(fast_tmp / "copy.gs"), truth


def assert_all_exact(store, truth: dict[str, np.ndarray]) -> None:
    assert set(store.keys()) == set(truth)
    bad = [k for k, v in truth.items() if not cw.same(store.read(k, verify=True), v)]
    assert not bad, f"{len(bad)} keys differ, e.g. {bad[:3]}"


def test_bit_flip_in_a_payload_is_found(written_store):
    path, truth = written_store
    with gradstore.open(path, "r") as r:
        key = next(k for k in r.keys() if r.entry(k).payload_len >= 64 and r.entry(k).ns == "r1")
        e = r.entry(key)
    seg_file = Path(path) / e.segment
    with open(seg_file, "r+b") as f:
        f.seek(e.payload_offset + e.payload_len // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))
    for mode in ("r", "a"):
        with gradstore.open(path, mode, rank=1 if mode == "a" else None) as gs:
            with pytest.raises(gradstore.ChecksumError) as exc:
                gs.read(key, verify=True)
            err = exc.value
            assert (err.key, err.segment, err.offset) == (key, e.segment, e.offset)
            assert key in str(err) and e.segment in str(err) and str(e.offset) in str(err)
            view = gs[key]  # unverified reads still work and show the damaged bytes
            assert not cw.same(view, truth[key]) and view.shape == truth[key].shape
            problems = gs.verify()
            assert [(p.key, p.segment, p.offset) for p in problems] == [(key, e.segment, e.offset)]
            others = {k: v for k, v in truth.items() if k != key}
            assert all(cw.same(gs.read(k, verify=True), v) for k, v in others.items())


def _delete_index(path: str) -> None:
    for ns in Path(path).iterdir():
        if ns.is_dir():
            for f in ns.iterdir():
                if f.name.startswith("index"):
                    f.unlink()


def _damage_snapshot(path: str, how: str) -> None:
    for ns in Path(path).iterdir():
        snap = ns / "index.snap"
        if not snap.exists():
            continue
        data = bytearray(snap.read_bytes())
        if how == "truncate":
            data = data[:len(data) // 2]
        elif how == "empty":
            data = bytearray()
        elif how == "flip-header":
            data[20] ^= 0x01
        else:  # flip a byte in the body
            data[len(data) * 2 // 3] ^= 0x40
        snap.write_bytes(bytes(data))


INDEX_DAMAGE = ["deleted", "snap-truncate", "snap-empty", "snap-flip-header", "snap-flip-body"]


@pytest.mark.parametrize("how", ["read", "open-a", "repair"])
@pytest.mark.parametrize("damage", INDEX_DAMAGE)
def test_index_damage_is_rebuilt_from_segments(written_store, damage, how):
    path, truth = written_store
    if damage == "deleted":
        _delete_index(path)
    else:
        _damage_snapshot(path, damage.removeprefix("snap-"))
    if how == "read":  # a reader rebuilds in memory and changes nothing
        state = cw.tree_state(path)
        with gradstore.open(path, "r") as r:
            assert_all_exact(r, truth)
        assert cw.tree_state(path) == state
    elif how == "open-a":
        for rank in (None, 1):
            with gradstore.open(path, "a", rank=rank) as gs:
                assert gs.verify() == []
    else:
        counts = gradstore.repair(path)
        assert sum(counts.values()) == len(truth)
    with gradstore.open(path, "r") as r:
        assert_all_exact(r, truth)
        assert r.verify() == []
    with gradstore.open(path, "a", rank=1) as gs:  # and it is writable again
        gs.write(PROBE_KEY, PROBE)
    with gradstore.open(path, "r") as r:
        assert_all_exact(r, {**truth, PROBE_KEY: PROBE})


def test_damaged_log_entry_does_not_destroy_later_records(fast_tmp):
    """A byte flipped in the middle of the log (not a torn tail) must not cost committed records.

    Replay stops at the damaged entry. If recovery then truncates the log there and
    discards the segment bytes past the last entry it knows, every record committed
    after the damage is destroyed, although each one is intact and self-describing.
    """
    path = fast_tmp / "log.gs"
    truth = {}
    with gradstore.open(path, "a") as gs:
        for i in range(40):
            truth[f"k{i}"] = np.full(100 + i, i, np.float32)
            gs.write(f"k{i}", truth[f"k{i}"])
    log = sorted((path / "main").glob("index-*.log"))[-1]
    data = bytearray(log.read_bytes())
    assert len(data) > 16 + 40 * 40  # the 40 entries are in this log, not only in the snapshot
    data[16 + 30] ^= 0x01  # inside the first entry's body
    log.write_bytes(bytes(data))
    with gradstore.open(path, "a") as gs:
        lost = sorted(set(truth) - set(gs.keys()))
        assert not lost, f"{len(lost)} committed keys lost after a one-byte log damage"
        assert_all_exact(gs, truth)


def test_sigkill_between_a_large_payload_and_its_header(fast_tmp):
    """Large payloads are written chunk by chunk before their header; a kill
    just before the header leaves bytes that are no record, and recovery drops them."""
    path = fast_tmp / "big.gs"
    small = np.arange(10.0)
    big = np.arange(1 << 19, dtype=np.float32)  # 2 MiB: hashed in parallel, header last
    pid = os.fork()
    if pid == 0:  # the writer
        try:
            gs = gradstore.open(path, "a")
            gs.write("small", small)
            real = os.pwritev
            written = [0]

            def pwritev(fd, buffers, offset):
                size = sum(len(memoryview(b).cast("B")) for b in buffers)
                if written[0] >= big.nbytes and 0 < size < 4096 and offset % 64 == 0:
                    os.kill(os.getpid(), signal.SIGKILL)  # payload in place, header not
                n = real(fd, buffers, offset)
                written[0] += n
                return n

            os.pwritev = pwritev
            gs.write("big", big)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    seg = path / "main" / "data-000000.bin"
    assert seg.stat().st_size > len(big.tobytes())  # the orphan payload is really there
    with gradstore.open(path) as gs:
        assert gs.keys() == ["small"]
    with gradstore.open(path, "a") as gs:
        assert gs.keys() == ["small"] and seg.stat().st_size < 4096  # torn tail cut
        gs.write("big", big)
    with gradstore.open(path) as gs:
        assert gs.verify() == []
        assert cw.same(gs.read("big", verify=True), big) and cw.same(gs.read("small", verify=True), small)
