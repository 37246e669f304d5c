"""Memory stays bounded: no process of a `report -j 2` grows with the store it reads."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

import gradstore

from report_helpers import EG

TENSOR = 1 << 20          # elements: 4 MiB fp32 tensors in both stores


def make(path, keys: int) -> str:
    base = np.random.default_rng(2).laplace(0, 1e-4, TENSOR).astype(np.float32)
    with gradstore.open(path, "a") as gs:
        for i in range(keys):
            gs.write(f"R_0_E_0_S_{i}_B_0/w", np.roll(base, 7919 * i))
    return str(path)


def peak_rss(store, results) -> int:
    """The largest peak RSS (VmHWM) of any process of one CLI report, in bytes."""
    proc = subprocess.Popen([sys.executable, "-m", "gradstore", "report", store, "--codec", EG,
                             "-j", "2", "-q", "--results", str(results)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peaks[p.pid] = max(peaks.get(p.pid, 0), int(line.split()[1]) * 1024)
            except OSError:
                pass
        time.sleep(0.02)
    err = proc.stderr.read()
    assert proc.wait() == 0, err
    return max(peaks.values())


def test_peak_rss_does_not_grow_with_the_store(tmp_path):
    small = make(tmp_path / "small.gs", 8)       # 32 MiB
    big = make(tmp_path / "big.gs", 64)          # 256 MiB: 8x
    small_peak = peak_rss(small, tmp_path / "s.results")
    big_peak = peak_rss(big, tmp_path / "b.results")
    # Were pages of the store kept mapped, a worker would hold half of it (128 MiB) more.
    assert big_peak < 1.3 * small_peak, (small_peak >> 20, big_peak >> 20)


def mapped_bytes(prefix: str) -> int:
    """Resident bytes of this process's mappings of files under ``prefix``."""
    total, name = 0, ""
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):     # a mapping's first line
                name = parts[5] if len(parts) > 5 else ""
            elif parts[0] == "Rss:" and name.startswith(prefix):
                total += int(parts[1]) * 1024
    return total


@pytest.mark.parametrize("elements", [(2000, 12000), (100_000, 800_000)])
def test_measured_records_leave_no_pages_mapped(tmp_path, elements):
    """Tensors measured one after the other in this process, as -j 1 and the main
    process of -j N do: none of their pages stays mapped.  Small ones (biases,
    norms: 8-48 KiB) and weights (0.4-3 MiB), in a store just written, whose
    pages are cached in large folios (up to 2 MiB).  A page fault maps the cached
    pages around it too (fault-around, or the whole folio): letting go of 64 KiB
    blocks around each payload left 80% of the small tensors and a quarter of
    the weights mapped."""
    import os
    from gradstore.report.measure import measure_task
    rng = np.random.default_rng(0)
    path = tmp_path / "store.gs"
    with gradstore.open(path, "a") as gs:     # buckets written whole, as the capture does
        for step in range(6):
            gs.write_bucket(f"R_0_E_0_S_{step}_B_0", {
                f"layers.{i}.t": rng.laplace(0, 1e-4, int(rng.integers(*elements))).astype(np.float32)
                for i in range(100 if elements[0] < 10_000 else 10)})
    with gradstore.open(path) as gs:
        keys = gs.keys()
        payload = sum(gs.entry(k).payload_len for k in keys)
        results = measure_task(gs, [EG], keys)
        assert len(results) == 2 * len(keys) and not any(r.failed for r in results)
        left = mapped_bytes(os.path.realpath(path))
    assert left < 0.05 * payload, (left, payload)
