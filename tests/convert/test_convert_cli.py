"""gradstore-convert as users run it: end to end, re-runs, collisions, bad input, mistakes."""
from __future__ import annotations

import pickle

import h5py
import numpy as np
import torch
from convert_helpers import (assert_same, bucket, error_lines, run_cli, store_contents, to_numpy,
                             write_buckets)
from safetensors.torch import save_file

import gradstore
from gradstore.convert import convert


def test_end_to_end_then_rerun_skips_everything(src, dest):
    expected = write_buckets(src / "rank0", 4, dtype=torch.bfloat16)
    b = bucket(50)
    with h5py.File(src / "pack_000.h5", "w") as f:
        for m, t in b.items():
            f[f"/R_1_E_0_S_0/B_0/{m}"] = t.numpy()
    expected.update({f"R_1_E_0_S_0_B_0/{m}": t.numpy() for m, t in b.items()})
    s = bucket(60, torch.float16)
    save_file(s, str(src / "R_2_E_0_S_0_B_0.safetensors"))
    expected.update({f"R_2_E_0_S_0_B_0/{m}": to_numpy(t) for m, t in s.items()})

    first = run_cli(src, dest, "-j", 2)
    assert first.returncode == 0, first.stderr
    assert "6 files converted" in first.stderr and f"{len(expected)} tensors written" in first.stderr
    assert_same(store_contents(dest), expected)

    again = convert([src], dest, jobs=0)        # the API the CLI calls, in this process
    assert again.ok
    assert (again.files_present, again.tensors_written, again.tensors_present) == (6, 0, len(expected))
    assert_same(store_contents(dest), expected)


def test_key_collision_is_reported_never_overwritten(src, dest):
    expected = write_buckets(src, 3)
    with gradstore.open(dest, "a") as gs:   # the store already holds other data for one key
        gs.write("R_0_E_0_S_1_B_0/model.layers.0.mlp.weight", np.zeros((64, 8), np.float32))
    before = (src / "R_0_E_0_S_1_B_0.pt").read_bytes()

    report = convert([src], dest, jobs=0, delete_source=True)
    assert not report.ok
    (path, line), = report.errors
    assert path == str(src / "R_0_E_0_S_1_B_0.pt")
    assert line.startswith(f"{path}: key collision: R_0_E_0_S_1_B_0/model.layers.0.mlp.weight "
                           "is in the store with other data")
    assert (src / "R_0_E_0_S_1_B_0.pt").read_bytes() == before        # left untouched
    assert not (src / "R_0_E_0_S_0_B_0.pt").exists()                  # the others carried on
    got = store_contents(dest)
    assert not got["R_0_E_0_S_1_B_0/model.layers.0.mlp.weight"].any()  # not overwritten
    assert "R_0_E_0_S_1_B_0/model.layers.1.mlp.weight" not in got     # the part wrote nothing
    for k in expected:
        if k.startswith(("R_0_E_0_S_0_B_0", "R_0_E_0_S_2_B_0")):
            assert got[k].tobytes() == expected[k].tobytes()


class NotATensor:
    pass


def test_bad_inputs_each_get_one_error_line_and_the_rest_carries_on(src, dest):
    expected = write_buckets(src, 2)
    good = (src / "R_0_E_0_S_0_B_0.pt").read_bytes()
    bad = {
        "truncated.pt": good[: len(good) // 2],
        "corrupt.pt": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        "empty.pt": b"",
        "unreadable.h5": b"this is not an HDF5 file" * 10,
        "broken.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json",
    }
    for name, data in bad.items():
        (src / name).write_bytes(data)
    torch.save({"lr": 0.1, "step": 3}, src / "hparams.pt")           # a pickle, but no tensors
    (src / "evil.pt").write_bytes(pickle.dumps(NotATensor()))          # would run code if unpickled
    torch.save({"x": NotATensor()}, src / "object.pt")
    bad_names = sorted([*bad, "hparams.pt", "evil.pt", "object.pt"])
    before = {n: (src / n).read_bytes() for n in bad_names}

    r = run_cli(src, dest, "-j", 2, "--delete-source")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = error_lines(r.stderr)
    assert sorted(ln.split(": error: ")[1].split(":")[0].rsplit("/", 1)[-1] for ln in lines) == bad_names
    by_name = {ln.split(": error: ")[1].split(":")[0].rsplit("/", 1)[-1]: ln for ln in lines}
    assert "truncated or corrupt" in by_name["truncated.pt"]
    assert "not a file of tensors" in by_name["hparams.pt"] and "float" in by_name["hparams.pt"]
    assert "weights_only" in by_name["object.pt"]
    assert "not a readable HDF5 file" in by_name["unreadable.h5"]
    assert "not a readable safetensors file" in by_name["broken.safetensors"]
    assert "8 failed" in r.stderr and "2 files converted" in r.stderr
    for n in bad_names:                                                # untouched, not deleted
        assert (src / n).read_bytes() == before[n]
    assert_same(store_contents(dest), expected)


def test_user_mistakes_are_one_line_never_a_traceback(src, dest, tmp_path):
    write_buckets(src, 1)
    cases = [
        ([src], "give at least one SRC and then DEST"),
        ([tmp_path / "missing", dest], "no such file or directory"),
        ([src / "notes.txt", dest], "not a source gradstore reads"),
        (["--once", src, dest], "--once goes with --watch"),
        (["--watch", src, src, dest], "give only DEST"),
        (["--dtype", "float8", src, dest], "invalid choice"),
        ([src, tmp_path / "notastore"], "exists and is not a gradstore store"),
    ]
    (src / "notes.txt").write_text("x")
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "file").write_text("x")
    for args, message in cases:
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gradstore-convert: error: "), (args, r.stderr)
        assert message in lines[0], (args, lines[0])


def test_a_store_locked_by_another_writer_is_one_clear_line(src, dest):
    write_buckets(src, 1)
    with gradstore.open(dest, "a"):
        r = run_cli(src, dest, "-j", 0)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "locked by another writer" in r.stderr
