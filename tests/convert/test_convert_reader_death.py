"""A reader process that dies takes its whole pool down: the innocent parts go again.

A reader dies of SIGBUS when a file it has mapped is truncated, of the OOM
killer, or of a crash in a reading library.  Every task of its pool fails
with it; the converter hands the tasks whose file did not change to the new
pool once more, so only a file that really changed (or kills readers twice)
is reported.
"""
from __future__ import annotations

import os

import torch
from convert_helpers import assert_same, store_contents, write_buckets
from test_convert_crash import convert_killing_a_reader

FILES = 40


def test_files_in_flight_when_a_reader_is_killed_are_read_again(src, dest):
    expected = write_buckets(src, FILES, dtype=torch.float32, modules=4, size=1 << 16)
    returncode, err, killed = convert_killing_a_reader(src, dest)
    assert killed
    assert returncode == 0, err
    assert err.count("\n") <= 1 and "error" not in err, err   # the summary line only
    assert os.listdir(src) == []
    assert_same(store_contents(dest), expected)
