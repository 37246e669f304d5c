"""The report engine: serial, -j and resumed runs give identical rows; results files."""
from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

import gradstore
from gradstore import report
from gradstore.report.engine import chunks
from gradstore.report.groups import ExactSum
from gradstore.report.results import MAGIC, ResultsFile, decode_line, default_path, encode_line

from report_helpers import EG, MIB, SPECS, gradstore_cli


def key_results(rep) -> list[dict]:
    return sorted((r.to_dict() for r in rep.results()), key=lambda d: (d["key"], d["codec"]))


def test_parallel_rows_and_results_equal_serial(store):
    for group_by in ((), ("step",), ("rank", "module")):
        serial = report.run(store, SPECS, group_by=group_by, results=False, progress=False)
        parallel = report.run(store, SPECS, group_by=group_by, jobs=2, results=False, progress=False)
        assert parallel.rows == serial.rows
        assert key_results(parallel) == key_results(serial)
    nkeys = len(gradstore.open(store))
    assert serial.keys == nkeys and len(key_results(serial)) == 3 * nkeys
    per_key = report.run(store, SPECS, results=False, progress=False).rows
    assert [r["group"] for r in per_key[:3]] == [per_key[0]["group"]] * 3
    bad = [r for r in per_key if r["group"] == "bad" and r["codec"].startswith("eg")]
    assert bad[0]["not_encodable"] == 1 and bad[0]["keys"] == 0


def test_rows_match_stored_variants_and_trials(store):
    """A stored variant gives the sizes a trial encoding gives."""
    trial = report.run(store, SPECS, group_by="step", results=False).rows
    with gradstore.open(store, "a") as gs:
        gs.encode(EG, jobs=2)
    stored = report.run(store, SPECS, group_by="step", results=False).rows
    assert stored == trial


def test_resume_measures_only_what_is_missing(store, tmp_path):
    res = tmp_path / "r.results"
    first = report.run(store, SPECS, group_by="rank", results=res)
    assert first.measured == first.keys and first.results_path == res
    again = report.run(store, SPECS, group_by="rank", results=res, jobs=2)
    assert again.measured == 0 and again.rows == first.rows
    lines = res.read_bytes().splitlines(keepends=True)
    assert lines[0] == MAGIC and len(lines) == 1 + 3 * first.keys
    # a new codec: every key once more, for it alone in the rows
    more = report.run(store, SPECS + ["zlib:level=1"], group_by="rank", results=res)
    assert more.measured == more.keys
    assert [r for r in more.rows if r["codec"] != "zlib:level=1"] == first.rows


def test_a_rewritten_tensor_is_measured_again(store, tmp_path):
    res = tmp_path / "r.results"
    report.run(store, SPECS, group_by="step", results=res)
    with gradstore.open(store, "a") as gs:
        key = gs.keys(step=1)[0]
        gs.write(key, np.ones(10, np.float32), overwrite=True)
    resumed = report.run(store, SPECS, group_by="step", results=res)
    assert resumed.measured == 1
    assert resumed.rows == report.run(store, SPECS, group_by="step", results=False).rows


def test_torn_and_damaged_lines_are_ignored_and_cut(store, tmp_path):
    res = tmp_path / "r.results"
    clean = report.run(store, SPECS, results=res)
    clean_results = key_results(clean)
    data = res.read_bytes()
    lines = data.splitlines(keepends=True)
    damaged = lines[5][:30] + (b"X" if lines[5][30:31] != b"X" else b"Y") + lines[5][31:]
    torn = lines[-1][: len(lines[-1]) // 2]
    res.write_bytes(b"".join(lines[:5]) + damaged + b"".join(lines[6:-1]) + torn)
    resumed = report.run(store, SPECS, results=res)
    assert resumed.measured == 2          # the key of the damaged line, and of the torn one
    assert resumed.rows == clean.rows
    assert key_results(resumed) == clean_results
    assert all(line.endswith(b"\n") for line in res.read_bytes().splitlines(keepends=True))


def test_fresh_replaces_and_foreign_files_are_refused(store, tmp_path):
    res = tmp_path / "r.results"
    report.run(store, SPECS, results=res)
    fresh = report.run(store, SPECS, results=res, fresh=True)
    assert fresh.measured == fresh.keys
    assert len(res.read_bytes().splitlines()) == 1 + 3 * fresh.keys
    other = tmp_path / "notes.txt"
    other.write_text("my notes\n")
    with pytest.raises(OSError, match="not a gradstore results file"):
        ResultsFile.open(other)
    assert other.read_text() == "my notes\n"


def test_unwritable_results_warn_once_and_still_report(store, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    rep = report.run(store, SPECS, group_by="step", results=blocker / "r.results")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradstore: warning: results not kept")
    assert rep.results_path is None
    assert rep.rows == report.run(store, SPECS, group_by="step", results=False).rows
    assert len(key_results(rep)) == 3 * rep.keys


def test_a_second_report_on_the_same_file_does_not_share_it(store, tmp_path):
    res = tmp_path / "r.results"
    held = ResultsFile.open(res)
    with pytest.raises(OSError, match="in use"):
        ResultsFile.open(res)
    held.close()
    ResultsFile.open(res).close()


def test_default_results_file_is_next_to_the_store(store):
    rep = report.run(store, SPECS)
    assert rep.results_path == default_path(store) and str(rep.results_path) == store + ".results"
    assert report.run(store, SPECS).measured == 0


def test_record_lines_round_trip_and_check():
    r = report.KeyResult("R_0_E_0_S_0_B_0/x", EG, 123, "float32", 10, 40, 128, nbits=99,
                         entropy_bits=1.5, lossless=False, max_abs=0.25, sq_err=1e-9, sq_ref=2.0)
    line = encode_line(r)
    assert decode_line(line) == r
    assert decode_line(line[:-1]) is None
    assert decode_line(line.replace(b"99", b"98")) is None
    assert json.loads(line[17:])["codec"] == EG


def test_chunks_are_bounded_and_keep_order():
    items = [(f"k{i}", i, n) for i, n in enumerate([3 * MIB, 1, 1, 70 * MIB] + [10] * 600)]
    total = sum(n for *_, n in items)
    out = list(chunks(items, total, workers=2, max_bytes=4 * MIB, max_keys=256))
    assert [k for ks, _, _ in out for k in ks] == [k for k, *_ in items]
    for ks, srcs, n in out:
        assert len(ks) <= 256 and (n <= 4 * MIB or len(ks) == 1)
        assert srcs == [int(k[1:]) for k in ks]


def test_chunks_shrink_towards_the_end():
    """Guided: a chunk takes at most 1/GUIDE of a worker's share of what is left, so
    the first are the largest allowed and the last are a single MiB: no worker waits
    long at the end for another's last big task."""
    from gradstore.report.engine import GUIDE, MIN_TASK_BYTES
    items = [(f"k{i}", i, MIB // 2) for i in range(2000)]          # 1000 MiB in 512 KiB keys
    total = sum(n for *_, n in items)
    out = list(chunks(items, total, workers=2, max_bytes=64 * MIB))
    assert [k for ks, _, _ in out for k in ks] == [k for k, *_ in items]
    sizes = [n for *_, n in out]
    assert sizes[0] == 64 * MIB and sizes[-2] == MIN_TASK_BYTES and sizes[-1] <= MIN_TASK_BYTES
    left = total
    for n in sizes:
        assert n <= max(MIN_TASK_BYTES, left // (2 * GUIDE))
        left -= n
    assert sizes == sorted(sizes, reverse=True)


def test_exact_sums_do_not_depend_on_order():
    rng = random.Random(5)
    xs = [rng.uniform(-1, 1) * 10 ** rng.randint(-12, 12) for _ in range(500)]
    values = set()
    for _ in range(5):
        rng.shuffle(xs)
        s = ExactSum()
        for x in xs:
            s.add(x)
        values.add(s.value)
    assert len(values) == 1
    naive = {sum(rng.sample(xs, len(xs))) for _ in range(20)}
    assert len(naive) > 1            # the test would notice plain sums


def test_parallel_encode_stores_what_serial_encode_stores(store, tmp_path):
    other = tmp_path / "copy.gs"
    from report_helpers import write_store
    write_store(other)
    with gradstore.open(store, "a") as a, gradstore.open(other, "a") as b:
        ra = a.encode(EG)
        rb = b.encode(EG, jobs=2)
        assert sorted(ra.written) == sorted(rb.written) and ra.failed == rb.failed == {
            "bad": ra.failed["bad"]}
        assert b.encode(EG, jobs=2).written == []
        for key in ra.written:
            assert a.variant(key, EG, verify=True).tobytes() == b.variant(key, EG, verify=True).tobytes()
            assert a.variant_entry(key, EG).extra["nbits"] == b.variant_entry(key, EG).extra["nbits"]


def test_cli_csv_per_key_and_per_group(store, tmp_path):
    per_key = tmp_path / "k.csv"
    proc = gradstore_cli("report", store, "--codec", EG, "-j", "2", "--csv", per_key)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(per_key.open()))
    nkeys = len(gradstore.open(store))
    assert len(rows) == 2 * nkeys and {r["group"] for r in rows} == set(gradstore.open(store).keys())
    per_group = tmp_path / "g.csv"
    proc = gradstore_cli("report", store, "--codec", EG, "--group-by", "step", "--csv", per_group)
    assert proc.returncode == 0, proc.stderr
    groups = list(csv.DictReader(per_group.open()))
    assert [r["group"] for r in groups[::2]] == ["step=0", "step=1", "step=2", "(plain keys)"]
    assert "ratio_theory" in groups[0] and "ratio_os" in groups[0]


def test_cli_help_explains_theory_and_os():
    proc = gradstore_cli("report", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "theory ratio (and saving) of the codec's exact bits" in text
    assert "os ratio (and saving) of the bytes the records really take on disk" in text
    assert "--dask" in text and "--scheduler-file" in text and "shared" in text


def test_cli_encode_in_parallel(store):
    proc = gradstore_cli("encode", store, "--codec", EG, "-j", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "encoded" in proc.stdout and "not encodable: bad" in proc.stderr
    with gradstore.open(store) as gs:
        assert gs.info()["variants"] == len(gs) - 1


def test_cli_resumed_with_nothing_left_to_measure_exits(store, tmp_path):
    """-j 2 with every key measured already: no workers left half-started
    (they printed tracebacks once the command was gone) or waiting for work."""
    res = tmp_path / "r.results"
    for _ in range(2):
        proc = gradstore_cli("report", store, "--codec", EG, "-j", "2", "--results", res, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == gradstore_cli("report", store, "--codec", EG, "--results", res).stdout


def gone(pid: int, seconds: float = 30) -> bool:
    """True once no process ``pid`` is left (not even a zombie) within ``seconds``."""
    import os
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_this_process_works_beside_its_workers(store):
    """-j 2 is this process and one worker: this process takes the first task at
    once (the worker's server is still starting), then one whenever no finished task
    waits; every task runs once, and the worker is stopped at the end."""
    import os
    from gradstore.report.engine import Runner
    from report_helpers import pid_after
    argsets = [(0.05, i) for i in range(60)]
    with gradstore.open(store) as gs, Runner(gs, jobs=2) as runner:
        ran = list(runner.imap(pid_after, argsets[:1]))
        assert ran == [(argsets[0], os.getpid())]        # one task: no worker started
        assert runner._executor is None
        ran = list(runner.imap(pid_after, argsets))
    assert sorted(args for args, _ in ran) == argsets   # each task once
    pids = [pid for _, pid in ran]
    assert pids[0] == os.getpid()
    workers = set(pids) - {os.getpid()}
    assert len(workers) == 1, pids                      # 60 x 50 ms: the worker has started
    assert 0 < pids.count(os.getpid()) < len(pids)
    assert all(gone(pid) for pid in workers)


def test_workers_get_tasks_the_moment_they_are_up(store):
    """The thread that starts the workers hands them their first tasks: they do not
    wait for this process to finish the task it took meanwhile."""
    import os
    from gradstore.report.engine import Runner
    from report_helpers import pid_and_end
    with gradstore.open(store) as gs, Runner(gs, jobs=2) as runner:
        ran = list(runner.imap(pid_and_end, [(8.0,)] + [(0.01,)] * 20))
    long = [(pid, end) for (seconds,), (pid, end) in ran if seconds == 8.0]
    assert len(ran) == 21 and long[0][0] == os.getpid()       # this process took the first task
    worker_ends = [end for _, (pid, end) in ran if pid != os.getpid()]
    assert worker_ends and min(worker_ends) < long[0][1]


@pytest.mark.parametrize("jobs,tasks", [(1, 3), (2, 1), (2, 3)])
def test_a_ctrl_c_inside_a_kernel_call_is_a_ctrl_c(store, jobs, tasks):
    """numba turns a KeyboardInterrupt raised while it compiles or loads a kernel into a
    SystemError; a task run in this process raises it as the KeyboardInterrupt (the CLI
    then stops with exit 130 and its one line), and any other SystemError as it is."""
    from gradstore.report.engine import Runner
    from report_helpers import interrupted_in_a_kernel
    with gradstore.open(store) as gs:
        with pytest.raises(KeyboardInterrupt), Runner(gs, jobs=jobs) as runner:
            list(runner.imap(interrupted_in_a_kernel, [(i,) for i in range(tasks)]))

        def other(source, i):
            raise SystemError("not an interrupt")
        with pytest.raises(SystemError, match="not an interrupt"), Runner(gs, jobs=1) as runner:
            list(runner.imap(other, [(0,)]))


def test_an_error_after_a_ctrl_c_is_the_ctrl_c(store, monkeypatch):
    """A Ctrl-C swallowed inside a callback (llvmlite's, as numba compiles) leaves a
    compile cut short, which fails with a RuntimeError of its own: once a Ctrl-C has
    reached the command, an error out of a task is that Ctrl-C."""
    import threading
    from gradstore import progress
    from gradstore.report.engine import Runner

    def cut_short(source, i):
        raise RuntimeError("no compiled object yet for <Library 'scan_patterns'>")
    with gradstore.open(store) as gs:
        with pytest.raises(RuntimeError, match="no compiled object"), Runner(gs, jobs=1) as runner:
            list(runner.imap(cut_short, [(0,)]))
        monkeypatch.setattr(progress, "_requested", threading.Event())
        progress._requested.set()
        with pytest.raises(KeyboardInterrupt), Runner(gs, jobs=1) as runner:
            list(runner.imap(cut_short, [(0,)]))


def test_idle_workers_are_stopped(store):
    """A worker started but given no task (this process did them all) has no
    manager thread to tell it to leave: closing the runner must stop it all the
    same, or this process waits for it at exit."""
    import multiprocessing
    import os
    from gradstore.report.engine import Runner
    from report_helpers import pid_after
    before = set(multiprocessing.active_children())
    with gradstore.open(store) as gs, Runner(gs, jobs=2) as runner:
        tasks = runner.imap(pid_after, [(0,), (0,)])
        assert next(tasks) == ((0,), os.getpid())
        assert runner._started.wait(120) and runner._start_error is None
        started = [p for p in multiprocessing.active_children() if p not in before]
        assert len(started) == 1 and runner.workers == 2
        tasks.close()              # the second task is never handed out
    for p in started:
        assert not p.is_alive() and p.exitcode is not None


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_command_leaves_no_temporary_results_behind(store, tmp_path, jobs):
    """Results that cannot be kept go to a temporary directory, which is gone once the
    command has exited (it leaves without the interpreter's last garbage collection:
    entry._leave), and its output is whole."""
    import os
    import subprocess
    import sys
    blocker = tmp_path / "file"
    blocker.write_text("")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run([sys.executable, "-m", "gradstore", "report", store, "--codec", SPECS[0],
                           "--results", blocker / "r.results", "-j", jobs, "-q"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, TMPDIR=str(tmp)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("gradstore: warning: results not kept")
    assert proc.stdout.rstrip().endswith("n/e: not encodable")          # the summary, to its last line
    assert list(tmp.iterdir()) == []
