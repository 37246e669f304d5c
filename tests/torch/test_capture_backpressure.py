"""Capture's memory bound when the disk is slower than training: block waits, drop skips and counts.

The hook runs on stand-in DDP buckets here so that the writer can be held
at a gate: what is captured, dropped and stored is then exact, not timed.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradstore  # noqa: E402
from gradstore.torch import CaptureError, GradientCapture  # noqa: E402


class Bucket:
    """What a DDP communication hook is handed: one flat buffer and its parameters."""

    def __init__(self, index, params, last):
        self._index, self._params, self._last = index, params, last
        self._buffer = torch.cat([p.grad.reshape(-1) for p in params])

    def index(self):
        return self._index

    def buffer(self):
        return self._buffer

    def parameters(self):
        return self._params

    def gradients(self):
        return [p.grad for p in self._params]

    def is_last(self):
        return self._last


class FakeDDP:
    def __init__(self, module):
        self.module = module
        self.hook = None

    def register_comm_hook(self, state, hook):
        self.hook = hook


def passthrough(state, bucket):
    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


class GatedStore:
    """A store whose writes wait at a gate: a disk as slow as the test wants."""

    def __init__(self, path, fail: Exception | None = None):
        self.store = gradstore.open(path, "a", rank=0)
        self.gate = threading.Event()
        self.fail = fail

    def write_bucket(self, name, tensors):
        self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.store.write_bucket(name, tensors)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    return m


def run_steps(capture, model, steps):
    ddp = FakeDDP(model)
    capture.register(ddp, passthrough)
    params = list(model.parameters())
    for step in range(steps):
        for p in params:
            p.grad = torch.full_like(p, float(step))
        ddp.hook(None, Bucket(0, params, last=True)).wait()


def step_values(path) -> dict[int, float]:
    with gradstore.open(path) as gs:
        out = {}
        for key in gs.keys():
            k = gradstore.Key.parse(key)
            vals = np.unique(np.asarray(gs[key]))
            assert len(vals) == 1
            out[k.step] = float(vals[0])
        return out


def test_block_waits_for_the_writer_and_keeps_memory_bounded(tmp_path, model):
    gated = GatedStore(tmp_path / "s.gs")
    capture = GradientCapture(gated, max_pending=2, on_full="block")
    t = threading.Thread(target=run_steps, args=(capture, model, 6))
    t.start()
    t.join(timeout=2)
    assert t.is_alive(), "with the writer stuck, the third bucket must wait for a buffer"
    assert capture.stats.captured == 2 and capture.stats.dropped == 0
    gated.gate.set()
    t.join()
    capture.close()
    bucket_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert capture.stats.captured == capture.stats.written == 6
    assert capture._pool.peak_lent <= 2 and capture._pool.peak_bytes <= 2 * bucket_bytes
    gated.store.close()
    assert step_values(tmp_path / "s.gs") == {s: float(s) for s in range(6)}


def test_drop_skips_counts_and_warns(tmp_path, model):
    gated = GatedStore(tmp_path / "s.gs")
    capture = GradientCapture(gated, max_pending=2, on_full="drop")
    with pytest.warns(RuntimeWarning, match="dropped"):
        run_steps(capture, model, 5)   # never waits: the gate is shut
    assert capture.stats.captured == 2 and capture.stats.dropped == 3
    gated.gate.set()
    with pytest.warns(RuntimeWarning, match="dropped 3 of 5"):
        capture.close()
    assert capture.stats.written == 2
    gated.store.close()
    # the buckets that were kept are the first two, intact
    assert step_values(tmp_path / "s.gs") == {0: 0.0, 1: 1.0}


def test_a_failed_write_surfaces_in_the_training_step_and_at_close(tmp_path, model):
    gated = GatedStore(tmp_path / "s.gs", fail=OSError(28, "No space left on device"))
    gated.gate.set()
    capture = GradientCapture(gated, max_pending=2)
    with pytest.raises(CaptureError, match="No space left"):
        run_steps(capture, model, 50)
    with pytest.raises(CaptureError, match="No space left"):
        capture.close()
    gated.store.close()
