"""Helpers for the converter tests: real source files, the CLI as users run it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradstore

torch = pytest.importorskip("torch")

REPO = Path(gradstore.__file__).resolve().parent.parent


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_cli(*args, timeout: float = 180, module: str = "gradstore.convert") -> subprocess.CompletedProcess:
    """``python -m gradstore.convert ARGS``, the way a user runs it."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, env=cli_env(), timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ": error: " in ln]


def bucket(seed: int, dtype=torch.float32, modules: int = 3, size: int = 64) -> dict:
    """A realistic bucket: {module name: gradient tensor}."""
    g = torch.Generator().manual_seed(seed)
    return {f"model.layers.{i}.mlp.weight": torch.randn(size, 8, generator=g).to(dtype)
            for i in range(modules)}


def to_numpy(t) -> np.ndarray:
    from gradstore.arrays import as_array
    return as_array(t).copy()


def write_buckets(directory: Path, n: int, *, dtype=torch.float32, modules: int = 3,
                  size: int = 64, rank: int = 0) -> dict[str, np.ndarray]:
    """n files R_{rank}_E_0_S_{s}_B_0.pt; returns {key: array} they hold."""
    directory.mkdir(parents=True, exist_ok=True)
    expected = {}
    for s in range(n):
        name = f"R_{rank}_E_0_S_{s}_B_0"
        b = bucket(1000 * rank + s, dtype, modules, size)
        torch.save(b, directory / f"{name}.pt")
        expected.update({f"{name}/{m}": to_numpy(t) for m, t in b.items()})
    return expected


def store_contents(path: Path) -> dict[str, np.ndarray]:
    with gradstore.open(path) as gs:
        return {k: np.array(gs.read(k, verify=True)) for k in gs.keys()}


def assert_same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype, k
        assert got[k].shape == v.shape, k
        assert got[k].tobytes() == v.tobytes(), k
