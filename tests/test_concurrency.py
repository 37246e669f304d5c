"""Concurrency: readers beside a live writer, log rotation and compaction under readers,
the one-writer lock, and several ranks writing one store from several processes.

Writers run tests/crash_writer.py (forked, or as a script); the reader is this process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xxhash

import gradstore
from gradstore.keys import try_parse

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import crash_writer as cw  # noqa: E402

SEGMENT = 16 * 1024
TIMEOUT = 60.0


def fork_writer(plan: dict) -> int:
    """Start ``crash_writer.run(plan)`` in a forked child; its pid."""
    return cw.fork(plan)


def script_writer(plan: dict, plan_path: Path) -> subprocess.Popen:
    """Start tests/crash_writer.py as a separate Python process."""
    plan_path.write_text(json.dumps(plan))
    env = dict(os.environ, PYTHONPATH=str(Path(gradstore.__file__).parent.parent))
    return subprocess.Popen([sys.executable, str(HERE / "crash_writer.py"), str(plan_path)],
                            env=env)


def wait_exit(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return status


def exited(pid: int) -> bool:
    """Whether a child has exited, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def wait_for_pause(plan: dict, pid: int, what: str) -> None:
    wait_for(lambda: os.path.exists(plan["pause"]["paused"]) or exited(pid), what)
    assert os.path.exists(plan["pause"]["paused"]), f"the writer never reached {what}"


def wait_for(cond, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def plan_for(tmp: Path, name: str, **kw) -> dict:
    plan = {"store": str(tmp / "conc.gs"), "committed": str(tmp / f"{name}.committed"),
            "segment_size": SEGMENT, "seed": 1, "n_ops": 100}
    plan.update(kw)
    return plan


def ops_of(plan: dict) -> list[list]:
    return plan.get("ops") or cw.make_ops(plan["seed"], plan["n_ops"], plan.get("rank"))


class VersionTable:
    """Tells which version of a key a read returned, from the bytes alone."""

    def __init__(self, ops: list[list]):
        self.by_hash: dict[str, dict[int, list[int]]] = {}
        for op in ops:
            for key, v in cw.op_writes(op):
                by_key = self.by_hash.setdefault(key, {})
                by_key.setdefault(self.digest(cw.expected(key, v)), []).append(v)

    @staticmethod
    def digest(arr: np.ndarray) -> int:
        return xxhash.xxh3_64_intdigest(arr.tobytes())

    def version(self, key: str, arr: np.ndarray) -> int | None:
        """The latest version whose dtype, shape and bytes ``arr`` has (empty ones share bytes)."""
        found = [v for v in self.by_hash.get(key, {}).get(self.digest(arr), ())
                 if cw.same(arr, cw.expected(key, v))]
        return max(found) if found else None


def simple_ops(n: int, prefix: str = "conc/k") -> list[list]:
    writes = [["write", f"{prefix}{i}", 0] for i in range(n)]
    return [["open", {"fsync": False}], *writes, ["close"]]


# -- (a) a reader beside a live writer ------------------------------------------------------


@pytest.mark.parametrize("rotate", [None, 5], ids=["library-schedule", "rotate-every-5"])
def test_reader_beside_a_live_writer(fast_tmp, rotate):
    """Every read is bit-exact; after refresh() every op committed before it is visible.

    The writer overwrites, rolls segments over, compacts and reopens; with
    rotate-every-5 it also snapshots and rotates its log every few writes.
    Every third round the reader lags: it lets the writer get 40 ops ahead.
    """
    plan = plan_for(fast_tmp, "live", seed=21, n_ops=500, checkpoint_every=rotate,
                    checkpoint_on_close=4 if rotate else None)
    ops = ops_of(plan)
    table = VersionTable(ops)
    writer = {"pid": fork_writer(plan), "status": None}

    def alive() -> bool:
        if writer["pid"] is not None:
            done, status = os.waitpid(writer["pid"], os.WNOHANG)
            if done:
                writer["pid"], writer["status"] = None, status
        return writer["pid"] is not None

    def committed_ops() -> int:
        return cw.read_committed(plan["committed"])

    problems: list[str] = []
    held: dict[str, tuple[np.ndarray, int]] = {}  # views taken early, re-checked at the end
    seen: dict[str, int] = {}
    reader = None
    try:
        wait_for(lambda: committed_ops() >= 1, "the writer to open the store")
        reader = gradstore.open(plan["store"], "r")
        rounds = done = 0
        while not problems:
            if rounds % 3 == 2:
                ahead = done + 40
                wait_for(lambda: committed_ops() >= ahead or not alive(), "the writer")
            last_round = not alive()
            done = committed_ops()
            committed, _ = cw.replay(ops, done)
            reader.refresh()
            keys = set(reader.keys())
            missing = [k for k in committed if k not in keys]
            if missing:
                problems.append(f"round {rounds}: {len(missing)} keys committed before refresh() "
                                f"are not visible, e.g. {missing[:3]}")
            for key in keys:
                try:
                    arr = reader.read(key, verify=True)
                except (gradstore.ChecksumError, FileNotFoundError) as exc:
                    problems.append(f"round {rounds}: get({key!r}) raised {exc!r}")
                    continue
                v = table.version(key, arr)
                if v is None:
                    problems.append(f"round {rounds}: {key!r} reads bytes the writer never wrote")
                    continue
                floor = max(committed.get(key, -1), seen.get(key, -1))
                if v < floor:
                    problems.append(f"round {rounds}: {key!r} reads version {v}, but version "
                                    f"{floor} was committed or seen before this refresh()")
                seen[key] = v
                if key not in held:
                    held[key] = (reader[key], v)
            rounds += 1
            if last_round:
                break
        assert not problems, "\n".join(problems[:10])
        while alive():
            time.sleep(0.01)
        assert writer["status"] == 0, f"writer failed (status {writer['status']})"
        committed, inflight = cw.replay(ops, committed_ops())
        assert not inflight, "the writer did not finish its ops"
        reader.refresh()
        assert not (bad := cw.content_problems(reader, committed, {})), "\n".join(bad[:10])
        assert reader.verify() == []
        stale = [k for k, (view, v) in held.items() if not cw.same(view, cw.expected(k, v))]
        assert not stale, f"views taken earlier changed under the reader: {stale[:3]}"
        assert rounds > 3, "the reader hardly overlapped the writer"
    finally:
        if writer["pid"] is not None:
            os.kill(writer["pid"], signal.SIGKILL)
            wait_exit(writer["pid"])
        if reader is not None:
            reader.close()


def test_reader_refresh_across_two_log_rotations(fast_tmp):
    """Two rotations between two refresh() calls (public API only: a close snapshots and
    rotates once the log holds 1024 entries)."""
    path = fast_tmp / "rot.gs"
    truth = {}
    with gradstore.open(path, "a") as w:
        w.write("first", np.ones(3, np.float32))
        truth["first"] = np.ones(3, np.float32)
    reader = gradstore.open(path, "r")
    assert reader.keys() == ["first"]
    for session in range(2):
        with gradstore.open(path, "a") as w:
            for i in range(1100):
                key = f"R_0_E_0_S_{session}_B_{i // 100}/m{i}"
                truth[key] = np.full(2, i, np.int32)
                w.write(key, truth[key])
    logs = sorted(p.name for p in (path / "main").glob("index-*.log"))
    reader.refresh()
    missing = sorted(set(truth) - set(reader.keys()))
    assert not missing, (f"after refresh() the reader misses {len(missing)} of {len(truth)} keys, "
                         f"e.g. {missing[:3]} (logs now: {logs})")
    assert all(cw.same(reader.read(k, verify=True), v) for k, v in truth.items())
    reader.close()


ROTATION_STATES = [
    ("new-log-created", {"fn": "replace", "where": ["Store._append", "create_log"],
                         "how": "after"}),
    ("snapshot-not-renamed", {"fn": "replace", "where": ["Store._append", "write_snapshot"],
                              "how": "before"}),
    ("snapshot-renamed", {"fn": "replace", "where": ["Store._append", "write_snapshot"],
                          "how": "after"}),
    ("old-log-removed", {"fn": "unlink", "where": ["Store._append", "Namespace.checkpoint"],
                         "how": "after"}),
]


@pytest.mark.parametrize("state,pause", ROTATION_STATES, ids=[s for s, _ in ROTATION_STATES])
def test_readers_during_a_log_rotation(fast_tmp, state, pause):
    """The writer is held inside its first log rotation; a reader opened before it and one
    opened during it both read every committed key, and both follow the writer to the end.

    (Two rotations between two refreshes are test_reader_refresh_across_two_log_rotations.)
    """
    ops = simple_ops(50)
    plan = plan_for(fast_tmp, "rot", ops=ops, checkpoint_every=20, checkpoint_on_close=10**9)
    plan["pause"] = dict(pause, n=1, paused=str(fast_tmp / "paused"), go=str(fast_tmp / "go"))
    pid = fork_writer(plan)
    try:
        wait_for(lambda: cw.read_committed(plan["committed"]) >= 2, "the first write")
        old = gradstore.open(plan["store"], "r")
        wait_for_pause(plan, pid, state)
        new = gradstore.open(plan["store"], "r")
        committed, inflight = cw.replay(ops, cw.read_committed(plan["committed"]))
        assert len(committed) >= 19
        old.refresh()
        for name, reader in (("old", old), ("new", new)):
            bad = cw.content_problems(reader, committed, inflight)
            assert not bad, f"{name} reader during rotation ({state}): " + "\n".join(bad[:10])
        Path(plan["pause"]["go"]).touch()
        assert wait_exit(pid) == 0
        pid = None
        committed, _ = cw.replay(ops, len(ops))
        for name, reader in (("old", old), ("new", new)):
            reader.refresh()
            bad = cw.content_problems(reader, committed, {})
            assert not bad, f"{name} reader after rotation ({state}): " + "\n".join(bad[:10])
            reader.close()
    finally:
        Path(plan["pause"]["go"]).touch()
        if pid is not None:
            wait_exit(pid)


# -- (b) one writer per namespace -------------------------------------------------------


def test_second_writer_in_the_same_process_is_refused(fast_tmp):
    path = fast_tmp / "lock.gs"
    first = gradstore.open(path, "a")
    first.write("a", np.arange(4.0))
    with pytest.raises(gradstore.LockedError, match=f"pid={os.getpid()}"):
        gradstore.open(path, "a")
    with pytest.raises(gradstore.LockedError):
        gradstore.open(path, "w")  # and "w" does not empty a store someone is writing
    with gradstore.open(path, "a", rank=3) as other:  # another namespace is another lock
        other.write("R_3_E_0_S_0_B_0/x", np.zeros(2))
    with gradstore.open(path, "r") as r:  # readers are never refused
        assert "a" in r
    first.write("b", np.arange(5.0))
    first.close()
    with gradstore.open(path, "a") as again:
        again.write("c", np.arange(6.0))
        assert sorted(again.keys()) == ["R_3_E_0_S_0_B_0/x", "a", "b", "c"]


@pytest.mark.parametrize("how", ["forked", "script"])
def test_second_writer_from_another_process_is_refused(fast_tmp, how):
    go = fast_tmp / "go"
    ops = [["open", {"fsync": False}], ["write", "held/a", 0], ["hold", str(go)], ["close"]]
    plan = plan_for(fast_tmp, "holder", ops=ops)
    if how == "forked":
        pid = fork_writer(plan)
    else:
        proc = script_writer(plan, fast_tmp / "plan.json")
        pid = proc.pid
    try:
        wait_for(lambda: "holding" in Path(plan["committed"]).read_text()
                 if Path(plan["committed"]).exists() else False, "the holder to take the lock")
        with pytest.raises(gradstore.LockedError, match=f"pid={pid}"):
            gradstore.open(plan["store"], "a")
        with gradstore.open(plan["store"], "r") as r:
            assert cw.same(r["held/a"], cw.expected("held/a", 0))
        go.touch()
        status = proc.wait() if how == "script" else wait_exit(pid)
        pid = None
        assert status == 0
        with gradstore.open(plan["store"], "a") as w:
            w.write("after", np.ones(2))
            assert cw.same(w.read("held/a", verify=True), cw.expected("held/a", 0))
    finally:
        go.touch()
        if pid is not None:
            if how == "script":
                proc.wait()
            else:
                wait_exit(pid)


def test_lock_of_a_killed_writer_is_released(fast_tmp):
    go = fast_tmp / "never"
    ops = [["open", {"fsync": False}], ["write", "held/a", 0], ["hold", str(go)], ["close"]]
    plan = plan_for(fast_tmp, "holder", ops=ops)
    pid = fork_writer(plan)
    wait_for(lambda: Path(plan["committed"]).exists()
             and "holding" in Path(plan["committed"]).read_text(), "the holder")
    with pytest.raises(gradstore.LockedError):
        gradstore.open(plan["store"], "a")
    os.kill(pid, signal.SIGKILL)
    wait_exit(pid)
    with gradstore.open(plan["store"], "a") as w:
        assert cw.same(w.read("held/a", verify=True), cw.expected("held/a", 0))
        w.write("after", np.ones(2))


# -- (c) several ranks, several processes ----------------------------------------------------


def rank_of(key: str) -> int | None:
    """The rank whose workload wrote ``key`` (plain keys carry the workload's seed)."""
    parsed = try_parse(key)
    if parsed is not None:
        return parsed.rank
    parts = key.split("/")
    return int(parts[1]) - 300 if parts[0] == "plain" else None


def test_ranks_write_concurrently_and_a_reader_sees_the_union(fast_tmp):
    path = fast_tmp / "conc.gs"
    gradstore.open(path, "a", rank=0).close()  # the store exists before the ranks start
    plans = [plan_for(fast_tmp, f"rank{r}", seed=300 + r, n_ops=120, rank=r) for r in range(4)]
    allops = {r: ops_of(p) for r, p in enumerate(plans)}
    tables = {r: VersionTable(ops) for r, ops in allops.items()}
    procs = [script_writer(p, fast_tmp / f"plan{r}.json") for r, p in enumerate(plans)]
    problems = []
    try:
        reader = gradstore.open(path, "r")
        while any(p.poll() is None for p in procs) and not problems:
            committed = {}
            for r, p in enumerate(plans):
                committed.update(cw.replay(allops[r], cw.read_committed(p["committed"]))[0])
            reader.refresh()
            keys = set(reader.keys())
            missing = [k for k in committed if k not in keys]
            if missing:
                problems.append(f"{len(missing)} committed keys not visible, e.g. {missing[:3]}")
            for key in keys:
                r = rank_of(key)
                try:
                    arr = reader.read(key, verify=True)
                except (gradstore.ChecksumError, FileNotFoundError) as exc:
                    problems.append(f"get({key!r}) raised {exc!r}")
                    continue
                if r is None or tables[r].version(key, arr) is None:
                    problems.append(f"{key!r} reads bytes no rank wrote")
        codes = [p.wait() for p in procs]
        assert codes == [0, 0, 0, 0]
        assert not problems, "\n".join(problems[:10])
        reader.refresh()
        union = {}
        for r, p in enumerate(plans):
            committed, inflight = cw.replay(allops[r], cw.read_committed(p["committed"]))
            assert not inflight
            union.update(committed)
            assert set(reader.keys(rank=r)) == {k for k in committed if not k.startswith("plain/")}
        assert not (bad := cw.content_problems(reader, union, {})), "\n".join(bad[:10])
        assert reader.verify() == []
        assert sorted(p.name for p in path.iterdir() if p.is_dir()) == ["r0", "r1", "r2", "r3"]
        reader.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_rank_writer_refuses_keys_of_another_rank(fast_tmp):
    path = fast_tmp / "ranks.gs"
    with gradstore.open(path, "a", rank=0) as gs:
        with pytest.raises(ValueError, match="rank 1"):
            gs.write("R_1_E_0_S_0_B_0/model.norm.weight", np.ones(4, np.float32))
        with pytest.raises(ValueError, match="rank 2"):
            gs.write_bucket("R_2_E_0_S_0_B_0", {"a": np.ones(2), "b": np.ones(2)})
        with pytest.raises(TypeError):  # one bad value spoils the whole bucket: nothing written
            gs.write_bucket("R_0_E_0_S_1_B_0", {"a": np.ones(2), "b": "not a tensor"})
        assert len(gs) == 0
        gs.write("R_0_E_0_S_0_B_0/model.norm.weight", np.ones(4, np.float32))
        gs.write("plain/any-rank-may-write-me", np.ones(1))
    with gradstore.open(path, "r") as r:
        assert sorted(r.keys()) == ["R_0_E_0_S_0_B_0/model.norm.weight",
                                    "plain/any-rank-may-write-me"]
        assert sorted(p.name for p in path.iterdir() if p.is_dir()) == ["r0"]


def test_ranks_creating_a_new_store_at_the_same_time(fast_tmp):
    """DDP ranks all call open(path, "a", rank=r) on a path that does not exist yet.

    Rank 0 is held just before it renames the store marker into place; rank 1
    opening then must not fail (today: "exists and is not a gradstore store").
    """
    path = fast_tmp / "fresh.gs"
    plan = plan_for(fast_tmp, "rank0", ops=simple_ops(3, "R_0_E_0_S_0_B_0/m"), rank=0,
                    store=str(path))
    plan["pause"] = {"fn": "replace|rename|link", "where": ["open_marker"], "n": 1,
                     "how": "before",
                     "paused": str(fast_tmp / "paused"), "go": str(fast_tmp / "go")}
    pid = fork_writer(plan)
    try:
        wait_for_pause(plan, pid, "the creation of the store marker")
        with gradstore.open(path, "a", rank=1) as gs:
            gs.write("R_1_E_0_S_0_B_0/m", np.ones(3))
    finally:
        Path(plan["pause"]["go"]).touch()
        status = wait_exit(pid)
    assert status == 0
    with gradstore.open(path, "r") as r:
        assert set(r.keys()) >= {"R_1_E_0_S_0_B_0/m", "R_0_E_0_S_0_B_0/m0"}


# -- (d) compaction under a reader --------------------------------------------------------------


def _overwrite_and_compact(w, truth: dict, rnd: int) -> None:
    for i, key in enumerate(sorted(truth)):
        if i % 2 == rnd % 2:
            truth[key] = np.full(700 + i, rnd * 1000 + i, np.float32)
            w.write(key, truth[key], overwrite=True)
    before, after = w.compact()
    assert after < before


def test_compaction_while_a_reader_holds_views(fast_tmp):
    path = fast_tmp / "compact.gs"
    truth = {f"R_0_E_0_S_0_B_{i % 4}/m{i}": np.full(700 + i, i, np.float32) for i in range(60)}
    w = gradstore.open(path, "a", segment_size=SEGMENT)
    for k, v in truth.items():
        w.write(k, v)
    _overwrite_and_compact(w, truth, 1)
    reader = gradstore.open(path, "r")
    views = {k: reader[k] for k in truth}
    copies = {k: v.copy() for k, v in views.items()}
    torch_view = reader.torch(sorted(truth)[1])
    _overwrite_and_compact(w, truth, 2)  # moves every record; old segments are deleted
    assert all(cw.same(views[k], copies[k]) for k in truth), "a view changed under compaction"
    assert torch_view.numpy().tobytes() == copies[sorted(truth)[1]].tobytes()
    reader.refresh()
    assert set(reader.keys()) == set(truth)
    assert all(cw.same(reader.read(k, verify=True), v) for k, v in truth.items())
    assert reader.verify() == []
    w.close()
    reader.close()
    assert all(cw.same(views[k], copies[k]) for k in truth)  # closing does not unmap views


def test_reader_after_two_compactions(fast_tmp):
    """A reader that was not refreshed while the writer compacted twice (two rotations)."""
    path = fast_tmp / "compact2.gs"
    truth = {f"R_0_E_0_S_0_B_0/m{i}": np.full(700 + i, i, np.float32) for i in range(20)}
    w = gradstore.open(path, "a", segment_size=SEGMENT)
    for k, v in truth.items():
        w.write(k, v)
    reader = gradstore.open(path, "r")
    _overwrite_and_compact(w, truth, 1)
    _overwrite_and_compact(w, truth, 2)
    truth["late"] = np.arange(3.0)
    w.write("late", truth["late"])
    reader.refresh()
    missing = sorted(set(truth) - set(reader.keys()))
    assert not missing, f"refresh() missed keys written after two rotations: {missing}"
    assert all(cw.same(reader.read(k, verify=True), v) for k, v in truth.items())
    w.close()
    reader.close()


@pytest.mark.parametrize("read", ["get", "torch"])
def test_verified_read_of_a_record_compacted_away_under_the_reader(fast_tmp, read):
    """The reader's entry points into a segment that compaction deleted, and the key was
    overwritten meanwhile: the read follows the log to the new record and must check the
    bytes it returns against that record's checksum, not the old one."""
    path = fast_tmp / "moved.gs"
    old, new = np.zeros(2000, np.float32), np.ones(2000, np.float32)
    w = gradstore.open(path, "a", segment_size=4096)
    w.write("k", old)
    w.write("j", np.ones(10, np.float32))
    reader = gradstore.open(path, "r")  # knows k in data-000000 and has not mapped it yet
    w.write("k", new, overwrite=True)
    w.compact()  # data-000000 is gone
    if read == "get":
        got = reader.read("k", verify=True)
    else:
        got = reader.torch("k", verify=True).numpy()
    assert cw.same(got, new) or cw.same(got, old)
    w.close()
    reader.close()
