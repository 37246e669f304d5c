"""--delete-source: a file goes only when every tensor is verified against the durable store."""
from __future__ import annotations

import h5py
import numpy as np
import torch
from convert_helpers import assert_same, bucket, run_cli, store_contents, to_numpy, write_buckets

import gradstore
from gradstore.convert import convert, pipeline


def test_sources_are_deleted_after_verification(src, dest):
    expected = write_buckets(src, 5, dtype=torch.bfloat16)
    t = bucket(7, torch.bfloat16)
    with h5py.File(src / "pack_000.h5", "w") as f:
        for m, v in t.items():
            f[f"/R_3_E_0_S_0/B_0/{m}"] = v.float().numpy()
    expected.update({f"R_3_E_0_S_0_B_0/{m}": to_numpy(v) for m, v in t.items()})

    r = run_cli(src, dest, "-j", 2, "--delete-source", "--dtype", "bfloat16", "-v")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in src.iterdir()) == []
    assert r.stdout.count("deleted ") == 6 and "6 sources deleted" in r.stderr
    assert_same(store_contents(dest), expected)


def test_a_source_that_changes_under_the_converter_is_not_deleted(src, dest, monkeypatch):
    """The file is rewritten between the write and the commit: verification must catch it.

    (A change between the read and the write is caught before anything is
    stored: see test_convert_direct.)
    """
    write_buckets(src, 3)
    victim = src / "R_0_E_0_S_1_B_0.pt"
    real_ingest = pipeline.ingest

    def ingest_then_rewrite(gs, batch, path):
        out = real_ingest(gs, batch, path)
        if path == str(victim):   # the producer overwrites it with new gradients
            torch.save(bucket(12345), victim)
        return out

    monkeypatch.setattr(pipeline, "ingest", ingest_then_rewrite)
    report = convert([src], dest, jobs=0, delete_source=True)

    assert not report.ok
    (path, line), = report.errors
    assert path == str(victim)
    assert "verification failed, not deleted" in line and "changed since it was read" in line
    assert victim.exists()                                   # the new data is still there
    assert_same({k: v for k, v in store_contents(dest).items() if "S_1" in k},
                {f"R_0_E_0_S_1_B_0/{m}": to_numpy(v) for m, v in bucket(1).items()})
    assert not (src / "R_0_E_0_S_0_B_0.pt").exists() and not (src / "R_0_E_0_S_2_B_0.pt").exists()
    assert report.sources_deleted == 2 and report.files_failed == 1


def test_nothing_is_deleted_when_anything_about_the_file_fails(src, dest):
    write_buckets(src, 2)
    with h5py.File(src / "pack_000.h5", "w") as f:     # one good bucket, one lossy --dtype cast
        f["/R_5_E_0_S_0/B_0/w"] = np.float32([1.0, 2.0])
        f["/R_5_E_0_S_0/B_1/w"] = np.float32([1.0, 1.0000001])
    with gradstore.open(dest, "a") as gs:               # a collision for one .pt file
        gs.write("R_0_E_0_S_1_B_0/model.layers.2.mlp.weight", np.ones((64, 8), np.float32))
    (src / "R_9_E_0_S_0_B_0.pt").write_bytes((src / "R_0_E_0_S_0_B_0.pt").read_bytes()[:100])

    report = convert([src], dest, jobs=0, delete_source=True, dtype="bfloat16")
    assert report.files_failed == 3 and report.sources_deleted == 1
    assert sorted(p.name for p in src.iterdir()) == [
        "R_0_E_0_S_1_B_0.pt", "R_9_E_0_S_0_B_0.pt", "pack_000.h5"]
    with gradstore.open(dest) as gs:
        assert "R_5_E_0_S_0_B_0/w" in gs and "R_5_E_0_S_0_B_1/w" not in gs
