"""SIGKILL in the middle of a conversion, then a re-run: nothing duplicated, nothing lost."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from convert_helpers import assert_same, cli_env, store_contents, write_buckets

import gradstore

FILES = 60


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.update(kids)
            todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _spool_dirs() -> set[str]:
    base = Path("/dev/shm")
    return {p.name for p in base.glob("gradstore-convert-*")} if base.is_dir() else set()


def _what_was_left(src: Path, dest: Path, expected: dict) -> tuple[list[str], set[str]]:
    """(keys stored, sources left) after a broken run: the store opens and holds
    correct tensors only, once each, and every deleted source is wholly in it."""
    with gradstore.open(dest) as gs:
        keys = gs.keys()
        assert len(keys) == len(set(keys))
        for k in keys:
            assert gs.read(k, verify=True).tobytes() == expected[k].tobytes()
    left = {p.name for p in src.iterdir()}
    for s in range(FILES):
        if f"R_0_E_0_S_{s}_B_0.pt" not in left:
            assert all(f"R_0_E_0_S_{s}_B_0/model.layers.{i}.mlp.weight" in keys for i in range(4))
    return keys, left


def _rerun_completes(args: list[str], src: Path, dest: Path, expected: dict) -> None:
    rerun = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert list(src.iterdir()) == []
    assert_same(store_contents(dest), expected)


def test_resume_after_sigkill_mid_conversion(src, dest):
    expected = write_buckets(src, FILES, dtype=torch.bfloat16, modules=4, size=2048)
    args = [sys.executable, "-m", "gradstore.convert", str(src), str(dest), "-j", "2",
            "--delete-source", "-v", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=cli_env())
    done = 0
    try:
        for line in proc.stdout:          # kill the writer mid-way; its readers die with it
            done += line.startswith("converted ")
            if done == 10:
                helpers = _descendants(proc.pid)   # readers, forkserver, resource tracker
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert helpers
    deadline = time.monotonic() + 60              # a hang guard: readers must not outlive the writer
    while any(_alive(p) for p in helpers):
        assert time.monotonic() < deadline, f"orphans left: {[p for p in helpers if _alive(p)]}"
        time.sleep(0.1)

    keys, left = _what_was_left(src, dest, expected)
    assert 0 < len(keys) < len(expected)
    assert 0 < len(left) <= FILES
    _rerun_completes(args, src, dest, expected)
    with gradstore.open(dest) as gs:
        assert gs.verify() == []
    # the spool of the killed run was swept by the re-run
    assert not any(name.startswith(f"gradstore-convert-{proc.pid}-") for name in _spool_dirs())


def _readers(pid: int) -> list[int]:
    """The reader processes of a converter: the forkserver's children."""
    def parent(p: int) -> int:
        return int(Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[1])
    out = []
    for p in _descendants(pid):
        try:
            if parent(p) != pid and b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes():
                out.append(p)
        except OSError:
            continue
    return out


def reader_kill_args(src, dest) -> list[str]:
    return [sys.executable, "-m", "gradstore.convert", str(src), str(dest), "-j", "2",
            "--delete-source", "-v", "--no-progress"]


def convert_killing_a_reader(src, dest, after: int = 5) -> tuple[int, str, int | None]:
    """Run gradstore-convert -j 2 over ``src`` and SIGKILL one of its readers once
    ``after`` files are converted: (exit status, stderr, the pid killed)."""
    proc = subprocess.Popen(reader_kill_args(src, dest), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env())
    hung = threading.Timer(120, proc.kill)   # a writer stuck on the dead pool never closes stdout
    hung.start()
    killed = None
    try:
        done = 0
        for line in proc.stdout:
            done += line.startswith("converted ")
            if done == after and killed is None:
                readers = _readers(proc.pid)
                assert len(readers) == 2, readers
                killed = readers[0]    # the other one ignores the pool's SIGTERM
                os.kill(killed, signal.SIGKILL)
        err = proc.stderr.read()
    finally:
        proc.wait(timeout=60)
        hung.cancel()
        proc.stdout.close()
        proc.stderr.close()
    return proc.returncode, err, killed


def test_a_reader_killed_mid_run_fails_its_files_only(src, dest):
    """SIGKILL to a reader: the files in flight are reported and kept, the run goes on
    with new readers and ends (no hang on the dead pool), and a re-run completes."""
    expected = write_buckets(src, FILES, dtype=torch.float32, modules=4, size=1 << 16)
    returncode, err, killed = convert_killing_a_reader(src, dest)
    assert killed
    assert returncode != -signal.SIGKILL, "the converter hung after its reader died"
    # The pool breaks: parts in flight fail (unless none was), later ones go to new readers.
    assert returncode == (1 if "a reader process died" in err else 0), err
    assert len(err.strip().splitlines()) <= 4, err   # one line per file in flight, no traceback
    assert "Traceback" not in err
    keys, left = _what_was_left(src, dest, expected)
    assert len(left) < FILES                               # the run went on after the kill
    assert bool(left) == (returncode == 1)            # and kept exactly what failed
    _rerun_completes(reader_kill_args(src, dest), src, dest, expected)
