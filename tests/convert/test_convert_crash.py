"""SIGKILL in the middle of a conversion, then a re-run: nothing duplicated, nothing lost."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
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

    # What the crash left: a store that opens, holds correct tensors only, and is not complete.
    with gradstore.open(dest) as gs:
        keys = gs.keys()
        assert len(keys) == len(set(keys))
        for k in keys:
            assert gs.get(k, verify=True).tobytes() == expected[k].tobytes()
    assert 0 < len(keys) < len(expected)
    left = {p.name for p in src.iterdir()}
    assert 0 < len(left) <= FILES
    # every deleted source is completely in the store
    for s in range(FILES):
        if f"R_0_E_0_S_{s}_B_0.pt" not in left:
            assert all(f"R_0_E_0_S_{s}_B_0/model.layers.{i}.mlp.weight" in keys for i in range(4))

    rerun = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert list(src.iterdir()) == []
    assert_same(store_contents(dest), expected)
    with gradstore.open(dest) as gs:
        assert gs.verify() == []
    # the spool of the killed run was swept by the re-run
    assert not any(name.startswith(f"gradstore-convert-{proc.pid}-") for name in _spool_dirs())
