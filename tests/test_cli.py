"""The gradstore command: real subprocesses, real exit codes, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import gradstore


def run(*args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "gradstore", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "cli.gs"
    with gradstore.open(path, "a") as gs:
        for s in range(3):
            gs.write_bucket(f"R_0_E_0_S_{s}_B_0", {
                "model.layers.0.mlp.up_proj.weight": np.full((4, 2), s, np.float32),
                "model.norm.weight": np.full(4, s, ml_dtypes.bfloat16)})
    return path


def test_ls_info_get(store, tmp_path):
    out = run("ls", store, "--step", "1:3", "--module", "*.mlp.*").stdout.split()
    assert out == ["R_0_E_0_S_1_B_0/model.layers.0.mlp.up_proj.weight",
                   "R_0_E_0_S_2_B_0/model.layers.0.mlp.up_proj.weight"]
    long = run("ls", store, "-l", "--step", "0", "--module", "model.norm.*").stdout
    assert long.strip() == "R_0_E_0_S_0_B_0/model.norm.weight\tbfloat16\t4\t8"
    info = json.loads(run("info", store, "--json").stdout)
    assert info["keys"] == 6 and info["buckets"] == 3 and info["dtypes"] == {"bfloat16": 3, "float32": 3}
    assert "keys         6" in run("info", store).stdout
    out_npy = tmp_path / "x.npy"
    run("get", store, "R_0_E_0_S_2_B_0/model.norm.weight", "-o", out_npy)
    assert np.array_equal(np.load(out_npy), np.full(4, 2, np.float32))
    out_bin = tmp_path / "x.bin"
    run("get", store, "R_0_E_0_S_2_B_0/model.layers.0.mlp.up_proj.weight", "-o", out_bin)
    assert out_bin.read_bytes() == np.full((4, 2), 2, np.float32).tobytes()


@pytest.mark.parametrize("args", [
    ["ls", "{missing}"],
    ["info", "{junk}"],
    ["get", "{store}", "R_0_E_0_S_9_B_0/x", "-o", "{tmp}/o.npy"],
    ["ls", "{store}", "--step", "ten"],
    ["nosuchcommand"],
    ["get", "{store}"],
])
def test_user_mistakes_are_one_line_and_nonzero(store, tmp_path, args):
    junk = tmp_path / "junk"
    junk.mkdir()
    fill = {"store": store, "missing": tmp_path / "nope.gs", "junk": junk, "tmp": tmp_path}
    proc = run(*[a.format(**fill) for a in args], ok=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_verify_repair_compact(store):
    assert "ok: 6 keys verified" in run("verify", store).stdout
    with gradstore.open(store) as gs:
        e = gs.entry("R_0_E_0_S_1_B_0/model.norm.weight")
    seg = store / e.segment
    data = bytearray(seg.read_bytes())
    data[e.payload_offset] ^= 1
    seg.write_bytes(bytes(data))
    proc = run("verify", store, ok=False)
    assert proc.returncode == 1
    assert proc.stdout.count("DAMAGED") == 1 and "R_0_E_0_S_1_B_0/model.norm.weight" in proc.stdout
    for p in (store / "main").glob("index*"):
        p.unlink()
    assert "6 entries" in run("repair", store).stdout
    with gradstore.open(store, "a") as gs:
        gs.write("R_0_E_0_S_0_B_0/model.norm.weight", np.zeros(4, np.float32), overwrite=True)
    assert "reclaimed" in run("compact", store).stdout
    with gradstore.open(store) as gs:
        assert len(gs) == 6 and gs["R_0_E_0_S_0_B_0/model.norm.weight"].dtype == np.float32
