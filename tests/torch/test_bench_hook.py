"""tools/bench_hook.py runs end to end (a few steps): its bytes are what the hook's records say."""
from __future__ import annotations

import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from gradstore.hookstats import read_stats  # noqa: E402

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_hook.py"
STEPS = 12


def test_bench_hook_smoke(tmp_path):
    png, stats = tmp_path / "hook.png", tmp_path / "stats"
    proc = subprocess.run([sys.executable, str(TOOL), "--steps", str(STEPS), "--plot", str(png),
                           "--stats", str(stats)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = [line.split() for line in proc.stdout.splitlines()]
    rows = {p[0]: p for p in table if len(p) == 8 and p[0] in ("allreduce", "bf16", "eg", "eg+ef")}
    assert set(rows) == {"allreduce", "bf16", "eg", "eg+ef"}
    numel = int(proc.stdout.split(" gradient elements per step")[0].split()[-1])
    assert int(rows["allreduce"][1].replace(",", "")) == 4 * numel
    assert int(rows["bf16"][1].replace(",", "")) == 2 * numel
    assert rows["allreduce"][2] == "1.000x" and rows["bf16"][2] == "0.500x"
    for way, name in (("eg", "eg"), ("eg+ef", "eg_ef")):
        per_step = defaultdict(int)   # the bytes of the rank that sent more, step by step
        for rank in (0, 1):
            sent = defaultdict(int)
            for r in read_stats(stats / f"{name}_rank{rank}.csv"):
                sent[r.step] += r.bytes_after
            assert sorted(sent) == list(range(STEPS))
            for step, b in sent.items():
                per_step[step] = max(per_step[step], b)
        assert int(rows[way][1].replace(",", "")) == round(statistics.fmean(per_step.values()))
        assert 0 < float(rows[way][2].rstrip("x")) < 0.5
    assert "target bytes: eg+ef" in proc.stdout and "target loss: eg+ef" in proc.stdout
    assert png.stat().st_size > 10_000
