"""A reader process that dies takes its whole pool down: the innocent parts go again.

A reader dies of SIGBUS when a file it has mapped is truncated, of the OOM
killer, or of a crash in a reading library.  Every task of its pool fails
with it; the converter hands the tasks whose file did not change to the new
pool once more, so only a file that really changed (or kills readers twice)
is reported.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import torch
from convert_helpers import assert_same, cli_env, store_contents, write_buckets
from test_convert_crash import _readers

FILES = 40


def test_files_in_flight_when_a_reader_is_killed_are_read_again(src, dest):
    expected = write_buckets(src, FILES, dtype=torch.float32, modules=4, size=1 << 16)
    args = [sys.executable, "-m", "gradstore.convert", str(src), str(dest), "-j", "2",
            "--delete-source", "-v", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env())
    hung = threading.Timer(120, proc.kill)
    hung.start()
    killed = None
    try:
        done = 0
        for line in proc.stdout:
            done += line.startswith("converted ")
            if done == 5 and killed is None:
                readers = _readers(proc.pid)
                assert len(readers) == 2, readers
                killed = readers[0]
                os.kill(killed, signal.SIGKILL)
        err = proc.stderr.read()
    finally:
        proc.wait(timeout=60)
        hung.cancel()
        proc.stdout.close()
        proc.stderr.close()
    assert killed
    assert proc.returncode == 0, err
    assert err.count("\n") <= 1 and "error" not in err, err   # the summary line only
    assert os.listdir(src) == []
    assert_same(store_contents(dest), expected)
