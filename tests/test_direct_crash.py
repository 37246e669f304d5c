"""Crash safety of direct I/O appends: a writer SIGKILLed anywhere loses no committed record.

The writer of tests/test_crash.py (tests/crash_writer.py) with
``direct_io=True`` and a staging buffer of two blocks, so a run goes out
in several O_DIRECT writes and is killed between them, inside them (a
prefix of the bytes written), while a segment header is written, and at
random moments. On the disk (pytest's tmp_path), where O_DIRECT is real.
The checks are test_crash's: every committed key bit-exact before and after
recovery, nothing else but the op in flight, verify() clean, a new write kept.
"""
from __future__ import annotations

import random

import pytest

from gradstore import direct
from test_crash import (APPEND, COMPACT, SEG_APPEND, SEG_START, Point, base_plan, crash_and_check,
                        kill_at_random)
from test_direct import supports_o_direct

STREAM = "DirectSegmentWriter._stream"
HEADER = "DirectSegmentWriter._write_header"


@pytest.fixture
def disk_tmp(tmp_path):
    if not supports_o_direct(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    return tmp_path


def direct_plan(tmp_path, **kw) -> dict:
    plan = base_plan(tmp_path, **kw)
    plan["direct_io"] = True
    plan["direct_stage"] = 2 * direct.BLOCK
    return plan


POINTS = [
    *[Point("direct", "pwrite", (APPEND, SEG_APPEND, STREAM), (), n, how)
      for n, how in [(1, "before"), (2, "half"), (3, "after"), (6, "one"), (11, "allbut1"),
                     (19, "before"), (33, "half"), (52, "after"), (80, "half")]],
    Point("direct", "pwrite", (APPEND, SEG_APPEND, STREAM), (), 25, "half", seed=3, rank=2),
    *[Point("direct-header", "pwrite", (APPEND, SEG_START, HEADER), (), n, how)
      for n, how in [(1, "before"), (3, "half"), (7, "after")]],
    Point("direct-compact", "pwrite", (COMPACT, STREAM), (), 4, "half"),
    Point("direct-compact", "pwrite", (COMPACT, STREAM), (), 9, "after"),
    # a segment closed or synced: its padding cut
    Point("direct-trim", "ftruncate", ("SegmentWriter.trim",), (), 2, "before"),
    Point("direct-trim", "ftruncate", ("SegmentWriter.trim",), (), 5, "after"),
]


@pytest.mark.parametrize("point", POINTS, ids=[f"{p.id}-s{p.seed}" for p in POINTS])
def test_sigkill_inside_a_direct_write(disk_tmp, point):
    plan = direct_plan(disk_tmp, seed=point.seed, rank=point.rank)
    plan["fault"] = point.fault(plan)
    crash_and_check(plan)


@pytest.mark.parametrize("n", [3, 27, 101])
def test_sigkill_after_n_committed_direct_ops(disk_tmp, n):
    plan = direct_plan(disk_tmp, seed=300 + n)
    plan["kill_after"] = n
    crash_and_check(plan)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_moment_of_a_direct_writer(disk_tmp, seed):
    """The script in a real subprocess, killed from outside after a random delay."""
    delay = random.Random(seed).uniform(0.0, 0.15)
    kill_at_random(direct_plan(disk_tmp, seed=400 + seed, n_ops=5000), disk_tmp / "plan.json", delay)
