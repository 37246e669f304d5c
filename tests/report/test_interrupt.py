"""Stopping a report: Ctrl-C and SIGKILL of a `gradstore report -j 2`, then resuming.

Nothing done is lost, no key is counted twice or missed: the resumed rows
are those of an uninterrupted serial run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

import gradstore
from gradstore import report
from gradstore.codecs.eg.notice import MESSAGE as COMPILING
from gradstore.report.results import ResultsFile

from report_helpers import SPECS

SLOW = SPECS + ["eg:k=auto,scale=1e6,remap=rank"]


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """~100 MB: a few seconds of work for two workers, so a signal lands mid-run."""
    path = tmp_path_factory.mktemp("big") / "big.gs"
    rng = np.random.default_rng(1)
    base = rng.laplace(0, 1e-4, 1 << 18).astype(np.float32)
    with gradstore.open(path, "a") as gs:
        for s in range(12):
            gs.write_bucket(f"R_0_E_0_S_{s}_B_0", {f"m{m}": np.roll(base, 997 * (8 * s + m)) * (1 + m)
                                                  for m in range(8)})
    return str(path)


def start_report(store, results) -> subprocess.Popen:
    argv = [sys.executable, "-m", "gradstore", "report", store, *(a for s in SLOW for a in ("--codec", s)),
            "--group-by", "step", "-j", "2", "--results", str(results)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_records(proc, results, n=2) -> None:
    """Until the results file holds ``n`` records (the run is well under way)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if open(results, "rb").read().count(b"\n") > n:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"report ended or stalled before writing results: {proc.communicate()}")


def complete_keys(results, specs) -> set[str]:
    rf = ResultsFile.open(results)
    try:
        by_key: dict[str, set] = {}
        for key, codec in rf.index:
            by_key.setdefault(key, set()).add(codec)
        return {k for k, codecs in by_key.items() if codecs >= {"raw", *specs}}
    finally:
        rf.close()


def canonical(specs):
    from gradstore.variants import codec_of
    return [codec_of(s).spec for s in specs]


def test_ctrl_c_stops_the_workers_keeps_what_was_done_and_resumes(big_store, tmp_path):
    results = tmp_path / "r.results"
    proc = start_report(big_store, results)
    wait_for_records(proc, results)
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)            # what a terminal's Ctrl-C does
    t = time.monotonic()
    out, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - t
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers left running: {alive}"
    assert proc.returncode == 130, err
    lines = [line for line in err.strip().splitlines() if line != COMPILING]   # a cold kernel cache
    assert len(lines) == 1 and "Traceback" not in err, err
    with gradstore.open(big_store) as gs:
        total = len(gs)
    head, _, tail = lines[0].partition("; ")
    assert head == "gradstore: interrupted" and tail.endswith(" keys done, resume with the same command")
    done = int(tail.split()[0])
    assert 0 < done < total, (lines, elapsed)
    assert len(complete_keys(results, canonical(SLOW))) == done    # all it said it kept

    resumed = report.run(big_store, SLOW, group_by="step", results=results, jobs=2)
    assert resumed.measured == total - done
    clean = report.run(big_store, SLOW, group_by="step", results=False)
    assert resumed.rows == clean.rows


def test_sigkill_mid_run_then_resume_counts_every_key_once(big_store, tmp_path):
    results = tmp_path / "r.results"
    proc = start_report(big_store, results)
    wait_for_records(proc, results, n=4)
    os.killpg(proc.pid, signal.SIGKILL)           # the main process and its workers at once
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with gradstore.open(big_store) as gs:
        total = len(gs)
    kept = complete_keys(results, canonical(SLOW))
    assert len(kept) < total

    again = subprocess.run([sys.executable, "-m", "gradstore", "report", big_store,
                            *(a for s in SLOW for a in ("--codec", s)), "--group-by", "step",
                            "-j", "2", "--results", str(results), "-q"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    resumed = report.run(big_store, SLOW, group_by="step", results=results)
    assert resumed.measured == 0
    clean = report.run(big_store, SLOW, group_by="step", results=False)
    assert resumed.rows == clean.rows
    assert sorted((r.key, r.codec) for r in resumed.results()) == \
        sorted((r.key, r.codec) for r in clean.results())
