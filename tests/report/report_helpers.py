"""Shared by the report engine's tests: codec specs, a store of several tasks' worth of keys,
and the CLI in a subprocess.  A module of its own name (not conftest): test directories each
have a conftest, and ``from conftest import`` would pick whichever was imported first."""
from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np

import gradstore

EG = "eg:k=0,scale=1e6,sign=bit"
SPECS = [EG, "zstd:level=1"]
MIB = 1 << 20


def write_store(path, ranks=2, steps=3, modules=4, elements=64 * 1024, seed=3, epochs=1) -> str:
    """Laplace gradients (fp32 and bf16) with a NaN tensor (not encodable by eg) and a plain key."""
    rng = np.random.default_rng(seed)
    with gradstore.open(path, "a") as gs:
        for e in range(epochs):
            for s in range(steps):
                for r in range(ranks):
                    bucket = {f"layers.{m}.mlp.weight": rng.laplace(0, 1e-4, elements).astype(np.float32)
                              for m in range(modules)}
                    bucket["norm.weight"] = rng.laplace(0, 1e-3, 1000).astype(ml_dtypes.bfloat16)
                    gs.write_bucket(f"R_{r}_E_{e}_S_{s}_B_0", bucket)
        if "bad" not in gs:
            gs.write("bad", np.array([1.0, np.nan, 2.0], dtype=np.float32))
    return str(path)


def pid_after(source, seconds: float, *tag) -> int:
    """A Runner task: which process ran it, after ``seconds`` (``tag`` tells tasks apart)."""
    import time
    time.sleep(seconds)
    return os.getpid()


def pid_and_end(source, seconds: float) -> tuple[int, float]:
    """A Runner task: which process ran it, and when it ended (time.monotonic)."""
    import time
    time.sleep(seconds)
    return os.getpid(), time.monotonic()


def interrupted_in_a_kernel(source, *args):
    """A Runner task hit by a Ctrl-C while numba loads a kernel: what the dispatcher raises."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as exc:
        raise SystemError("CPUDispatcher(<function f>) returned a result with an exception set") from exc


def gradstore_cli(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "gradstore", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)
