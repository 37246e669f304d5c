"""``gradstore demo``: a real (short) DDP run captured, described and plotted; its user mistakes."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import gradstore  # noqa: E402


def gradstore_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gradstore", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_demo_captures_reports_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    r = gradstore_cli("demo", tmp_path / "d.gs", "--steps", "2", "--codec", "zstd:level=3",
                      "--plots", tmp_path / "plots")
    assert r.returncode == 0, r.stderr
    assert "step 2/2" in r.stdout and "$ gradstore info" in r.stdout and "zstd:level=3" in r.stdout
    with gradstore.open(tmp_path / "d.gs") as gs:
        assert gs.verify() == []
        keys = [gradstore.Key.parse(k) for k in gs.keys()]
    assert {k.rank for k in keys} == {0, 1} and {k.step for k in keys} == {0, 1}
    assert "model.layers.0.mlp.up_proj.weight" in {k.module for k in keys}
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "demo_bytes_per_step.png", "demo_ratio_per_codec.png"]


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--dtype", "int8"], "invalid choice"),
])
def test_demo_mistakes_are_one_line(tmp_path, args, message):
    r = gradstore_cli("demo", tmp_path / "d.gs", *args)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d.gs").exists()


def test_demo_refuses_an_existing_path(tmp_path):
    (tmp_path / "d.gs").mkdir()
    r = gradstore_cli("demo", tmp_path / "d.gs")
    assert r.returncode == 2 and "already exists" in r.stderr
    assert list((tmp_path / "d.gs").iterdir()) == []
