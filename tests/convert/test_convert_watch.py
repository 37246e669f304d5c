"""--watch: a live directory where files are still being written when they appear."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from convert_helpers import assert_same, bucket, cli_env, error_lines, store_contents, to_numpy

import gradstore
from gradstore.convert import watch
from gradstore.convert.watch import Watcher

# A producer like a DDP hook calling torch.save: it writes each file in place, in
# chunks, with pauses; the bytes come from staged files so it starts without torch.
PRODUCER = textwrap.dedent("""
    import os, sys, time
    staging, out, pause, stall_file, stall = sys.argv[1:6]
    for name in sorted(os.listdir(staging)):
        data = open(os.path.join(staging, name), "rb").read()
        with open(os.path.join(out, name), "wb") as f:
            step = len(data) // 8 + 1
            for i in range(0, len(data), step):
                f.write(data[i:i + step])
                f.flush()
                time.sleep(float(pause))
                if name == stall_file and i == 2 * step:
                    time.sleep(float(stall))   # longer than --settle, mid-file
        print("wrote", name, flush=True)
""")


def _stage(tmp_path: Path, n: int) -> tuple[Path, dict]:
    staging = tmp_path / "staging"
    staging.mkdir()
    expected = {}
    for s in range(n):
        name = f"R_0_E_0_S_{s}_B_0"
        b = bucket(s, torch.bfloat16, modules=3, size=512)
        buf = io.BytesIO()
        torch.save(b, buf)
        (staging / f"{name}.pt").write_bytes(buf.getvalue())
        expected.update({f"{name}/{m}": to_numpy(t) for m, t in b.items()})
    return staging, expected


def _producer(staging: Path, out: Path, pause: float, stall_file: str = "", stall: float = 0):
    return subprocess.Popen([sys.executable, "-c", PRODUCER, str(staging), str(out), str(pause),
                             stall_file, str(stall)], stdout=subprocess.PIPE, text=True)


def _watcher(out: Path, dest: Path, *extra) -> subprocess.Popen:
    """A running watcher, once it says it is watching (its signal handlers are in place)."""
    w = subprocess.Popen([sys.executable, "-m", "gradstore.convert", "--watch", str(out),
                          str(dest), "--no-progress", "-v", *map(str, extra)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    assert "watching" in w.stderr.readline()
    return w


def _wait_until(predicate, deadline: float = 120) -> None:
    end = time.monotonic() + deadline   # a guard against hanging, not a speed requirement
    while not predicate():
        assert time.monotonic() < end, "gave up waiting"
        time.sleep(0.1)


def test_partial_files_are_never_ingested(tmp_path, dest):
    """A slow producer that even stalls longer than the settle period mid-file."""
    staging, expected = _stage(tmp_path, 5)
    out = tmp_path / "out"
    out.mkdir()
    w = _watcher(out, dest, "--settle", 0.4, "-j", 1, "--delete-source")
    p = _producer(staging, out, 0.03, "R_0_E_0_S_2_B_0.pt", 1.5)
    assert p.wait(timeout=120) == 0
    _wait_until(lambda: not any(out.iterdir()))      # every file converted, verified, deleted
    w.send_signal(signal.SIGTERM)
    stdout, stderr = w.communicate(timeout=60)
    assert w.returncode == 0, stderr
    assert error_lines(stderr) == []
    converted = [ln.split("/")[-1] for ln in stdout.splitlines() if ln.startswith("converted ")]
    assert sorted(converted) == sorted(os.listdir(staging))   # each file once, none twice
    assert_same(store_contents(dest), expected)


def test_sigterm_finishes_cleanly_and_a_restart_neither_duplicates_nor_loses(tmp_path, dest):
    staging, expected = _stage(tmp_path, 8)
    out = tmp_path / "out"
    out.mkdir()
    w = _watcher(out, dest, "--settle", 0.3, "-j", 0)
    p = _producer(staging, out, 0.05)
    for _ in range(3):
        p.stdout.readline()
    w.send_signal(signal.SIGTERM)                     # while files are still arriving
    _, stderr = w.communicate(timeout=60)
    assert w.returncode == 0, stderr
    assert p.wait(timeout=120) == 0
    p.stdout.close()
    with gradstore.open(dest) as gs:                  # whole files only
        for name in gs.buckets():
            assert len(gs.bucket(name)) == 3

    again = subprocess.run([sys.executable, "-m", "gradstore.convert", "--watch", str(out),
                            str(dest), "--once", "--settle", "0.3", "-j", "0", "--no-progress"],
                           capture_output=True, text=True, env=cli_env(), timeout=120)
    assert again.returncode == 0, again.stderr
    assert "8 files converted" in again.stderr
    assert_same(store_contents(dest), expected)
    assert len(os.listdir(out)) == 8                  # not asked to delete


def test_once_takes_files_in_arrival_order(tmp_path, dest):
    out = tmp_path / "out"
    out.mkdir()
    names = [f"R_0_E_0_S_{s}_B_0.pt" for s in range(4)]
    for i, name in enumerate(reversed(names)):        # S_3 arrived first, S_0 last
        torch.save(bucket(i), out / name)
        os.utime(out / name, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    report = watch(out, dest, once=True, settle=0.05, jobs=0)
    assert report.ok and report.files_converted == 4
    with gradstore.open(dest) as gs:
        order = sorted(gs.buckets(), key=lambda b: gs.entry(gs.keys(step=int(b.split("_")[5]))[0]).time)
    assert order == [n[:-3] for n in reversed(names)]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_watcher_waits_for_settled_and_complete_files(tmp_path):
    clock = Clock()
    w = Watcher(tmp_path, settle=2.0, give_up=10.0, clock=clock)
    buf = io.BytesIO()
    torch.save(bucket(0), buf)
    data = buf.getvalue()
    path = tmp_path / "R_0_E_0_S_0_B_0.pt"
    path.write_bytes(data[: len(data) // 2])           # torch.save half way
    assert w.poll() == ([], [])
    clock.now = 5.0                                    # settled, but no central directory yet
    assert w.poll() == ([], [])
    with open(path, "ab") as f:                        # the writer goes on: a change restarts the clock
        f.write(data[len(data) // 2:])
    clock.now = 6.0
    assert w.poll() == ([], [])
    clock.now = 7.9
    assert w.poll() == ([], [])
    clock.now = 8.0
    assert w.poll() == ([str(path)], [])
    clock.now = 100.0
    assert w.poll() == ([], [])                        # taken once


def test_watcher_reports_a_stuck_file_once_and_retries_it_when_it_changes(tmp_path):
    clock = Clock()
    w = Watcher(tmp_path, settle=1.0, give_up=10.0, clock=clock)
    path = tmp_path / "R_0_E_0_S_0_B_0.pt"
    buf = io.BytesIO()
    torch.save(bucket(0), buf)
    path.write_bytes(buf.getvalue()[:500])
    w.poll()
    clock.now = 10.0
    assert w.poll() == ([], [str(path)])
    clock.now = 50.0
    assert w.poll() == ([], [])
    path.write_bytes(buf.getvalue())
    w.poll()
    clock.now = 51.0
    assert w.poll() == ([str(path)], [])
