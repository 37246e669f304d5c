"""CaptureCallback in a transformers Trainer run under DDP: 2 ranks, gloo, CPU."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import gradstore  # noqa: E402
from gradstore.torch.ddp import spawn  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import trainer_worker  # noqa: E402


def test_trainer_callback_keeps_epoch_and_step(tmp_path):
    results = spawn(trainer_worker.train_with_callback, 2, str(tmp_path), threads=1, timeout=60)
    for r in results:
        assert r["registered"] and r["closed"]
        assert r["global_step"] == 4        # 8 examples, 2 ranks x 2 per step, 2 epochs
        assert r["stats"]["written"] == r["stats"]["captured"] > 0
    names = results[0]["names"]
    with gradstore.open(tmp_path / "trainer.gs") as gs:
        assert gs.verify() == []
        keys = [gradstore.Key.parse(k) for k in gs.keys()]
    by_step = {}
    for k in keys:
        by_step.setdefault((k.rank, k.epoch, k.step), []).append(k.module)
    # steps 0, 1 in epoch 0 and 2, 3 in epoch 1, as the Trainer counts them; every parameter once
    assert sorted(by_step) == [(r, e, s) for r in (0, 1) for e, s in ((0, 0), (0, 1), (1, 2), (1, 3))]
    for modules in by_step.values():
        assert sorted(modules) == names
