"""A source truncated while the converter holds it: one error line, never a SIGBUS.

A helper thread watches the converter process and truncates a file the
moment the writer has it mapped or open, which is the window in which a
mapped source used to kill the writer with SIGBUS (issue 12, item 6).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from convert_helpers import cli_env, error_lines, write_buckets

import gradstore
from gradstore.convert import transfer
from gradstore.convert.source import Part, SourceError
from gradstore.convert.spool import Spool
from gradstore.convert.worker import read_part

FILES = 6
RUNS = 3


def _holds(pid: int, path: str) -> bool:
    """True when process ``pid`` has ``path`` mapped or open."""
    try:
        if path in Path(f"/proc/{pid}/maps").read_text():
            return True
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                return True
    except OSError:
        pass
    return False


def _truncator(pid: int, victims: list[str], fired: set[str], done: threading.Event) -> None:
    """Truncate each victim to 100 bytes as soon as process ``pid`` holds it."""
    while not done.is_set() and len(fired) < len(victims):
        for v in victims:
            if v not in fired and _holds(pid, v):
                os.truncate(v, 100)
                fired.add(v)


def test_sources_truncated_under_the_writer_are_reported_and_the_run_goes_on(src, dest):
    """A source the writer had mapped, truncated, used to kill the whole run with
    SIGBUS.  Now exactly the truncated files fail, one line each, and are kept."""
    write_buckets(src, FILES, dtype=torch.float32, modules=4, size=1 << 17)   # 16 MiB a file
    originals = {p.name: p.read_bytes() for p in sorted(src.iterdir())}
    fired_total = 0
    for run in range(RUNS):
        for name, data in originals.items():
            (src / name).write_bytes(data)
        if dest.exists():
            shutil.rmtree(dest)
        victims = [str(src / n) for i, n in enumerate(originals) if i % 2 == 1]
        args = [sys.executable, "-m", "gradstore.convert", str(src), str(dest), "-j", "2",
                "--delete-source", "-q"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=cli_env())
        fired: set[str] = set()
        done = threading.Event()
        t = threading.Thread(target=_truncator, args=(proc.pid, victims, fired, done),
                             daemon=True)
        t.start()
        try:
            out, err = proc.communicate(timeout=240)
        finally:
            done.set()
            t.join()
        fired_total += len(fired)
        assert proc.returncode != -signal.SIGBUS, f"run {run}: the converter died of SIGBUS"
        assert proc.returncode in (0, 1), (proc.returncode, err)
        assert "Traceback" not in err, err
        errors = error_lines(err)
        assert len(errors) == len(err.strip().splitlines()), err   # nothing but error lines
        assert proc.returncode == (1 if errors else 0), err
        for v in victims:   # reported at most once; once truncated, never deleted
            assert sum(v in e for e in errors) <= 1, err
            assert v not in fired or Path(v).stat().st_size == 100
        for e in errors:
            assert any(v in e for v in fired), e   # only truncated files fail
        # The other files carried on: converted, verified against the store, deleted.
        with gradstore.open(dest) as gs:
            keys = gs.keys()
            for i, name in enumerate(originals):
                if i % 2 == 0:
                    assert not (src / name).exists(), (name, err)
                    assert sum(k.startswith(name[:-3] + "/") for k in keys) == 4, name
            assert not gs.verify()
    assert fired_total, "the truncation never hit a window; the test proved nothing"


def test_a_short_read_of_the_source_is_one_source_error(src, tmp_path, monkeypatch):
    """The writer reads a source tensor after the reader checked it; if the file
    shrank meanwhile, that is a SourceError naming the file, not a crash."""
    write_buckets(src, 1, dtype=torch.float32, modules=2, size=1 << 12)
    path = str(next(src.iterdir()))
    with Spool() as spool:
        batch = read_part(Part(path, "pt"), None, str(spool.path))
        assert any(r.in_source for r in batch.refs)
        # Same size and mtime as the reader saw, but the bytes are gone: a stat check
        # cannot see this, only a read that comes back short.
        st = os.stat(path)
        os.truncate(path, 100)
        monkeypatch.setattr(transfer, "stat_of", lambda f: batch.stat)
        with pytest.raises(SourceError, match=f"{path}: .*truncated"):
            with transfer.unpack(batch) as tensors:
                for _, arr in tensors:
                    arr.sum()
        assert os.stat(path).st_size == 100 and st.st_size > 100
