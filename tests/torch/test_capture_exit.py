"""A training script that dies of an uncaught exception, capture never closed: what was captured is stored."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

import gradstore  # noqa: E402
from gradstore.torch.ddp import free_port  # noqa: E402

SCRIPT = textwrap.dedent('''
    import sys, time
    import torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    import gradstore
    from gradstore.torch import GradientCapture

    class SlowStore:                      # a slow disk: the queue is full when training dies
        def __init__(self, path):
            self.store = gradstore.open(path, "a", rank=0)
        def write_bucket(self, name, tensors):
            time.sleep(0.2)
            return self.store.write_bucket(name, tensors)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[2]}", rank=0, world_size=1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    ddp = DDP(model, bucket_cap_mb=0.0005)   # one bucket per parameter or two
    capture = GradientCapture(SlowStore(sys.argv[1]), max_pending=64)
    capture.register(ddp)
    for step in range(3):
        ddp(torch.randn(8, 16)).sum().backward()
    print("captured", capture.stats.captured, "written", capture.stats.written, flush=True)
    raise RuntimeError("training failed")
''')


def test_uncaught_exception_still_stores_everything_captured(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "s.gs"), str(free_port())],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "RuntimeError: training failed" in r.stderr
    captured = int(r.stdout.split()[1])
    assert int(r.stdout.split()[3]) < captured, "the writer was still behind when training died"
    with gradstore.open(tmp_path / "s.gs") as gs:
        assert gs.verify() == []
        assert len(gs.buckets()) == captured
        assert {gradstore.Key.parse(k).step for k in gs.keys()} == {0, 1, 2}
