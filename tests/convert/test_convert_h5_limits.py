"""HDF5 datasets that declare more than a reader can hold, or than the file holds.

A tiny file can declare a 64 GiB dataset (chunked and compressed, or never
written, so that its fill value stands for it).  Such a file fails whole,
with one line, before any of its datasets is read; the other files carry on.
"""
from __future__ import annotations

import numpy as np
import pytest
from convert_helpers import error_lines, run_cli, store_contents

h5py = pytest.importorskip("h5py")

GOOD = {"R_0_E_0_S_2_B_0/c.weight": np.arange(100, dtype=np.float32)}


def _files(src, huge: dict) -> None:
    with h5py.File(src / "bad.h5", "w") as f:
        f.create_dataset("R_0_E_0_S_0/B_0/a.weight", data=np.arange(100, dtype=np.float32))
        f.create_dataset("R_0_E_0_S_0/B_0/huge.weight", fillvalue=1.0, **huge)
        f.create_dataset("R_0_E_0_S_1/B_0/b.weight", data=np.arange(100, dtype=np.float32))
    with h5py.File(src / "good.h5", "w") as f:
        for key, arr in GOOD.items():
            bucket, module = key.split("/")
            r, e, s, b = bucket.split("_")[1::2]
            f.create_dataset(f"R_{r}_E_{e}_S_{s}/B_{b}/{module}", data=arr)


@pytest.mark.parametrize("huge, why", [
    # 64 GiB of fill value, compressed: more than a reader may hold.
    (dict(shape=(1 << 33,), dtype="f8", chunks=(1 << 20,), compression="gzip"), "in memory"),
    # 512 MiB without a filter in a file of a few KiB: a damaged or crafted header.
    (dict(shape=(1 << 26,), dtype="f8", chunks=(1 << 20,)), "whole file"),
], ids=["compressed-64GiB", "unfiltered-past-the-file"])
def test_a_dataset_declaring_too_much_fails_its_file_whole(src, dest, huge, why):
    _files(src, huge)
    res = run_cli(src / "bad.h5", src / "good.h5", dest, "-q")
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    errors = error_lines(res.stderr)
    assert len(errors) == len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "bad.h5" in errors[0] and "/R_0_E_0_S_0/B_0/huge.weight" in errors[0], errors
    assert why in errors[0] and "none of this file is converted" in errors[0], errors
    got = store_contents(dest)
    assert sorted(got) == sorted(GOOD)   # nothing of bad.h5, all of good.h5
    for k, v in GOOD.items():
        assert got[k].tobytes() == v.tobytes()
    assert (src / "bad.h5").stat().st_size < 1 << 20   # left as it was


def test_the_size_check_leaves_empty_and_scalar_datasets_to_the_reader(src, dest):
    """No dataspace, a scalar, zero elements: nothing to check against, and no crash."""
    with h5py.File(src / "odd.h5", "w") as f:
        f.create_dataset("R_0_E_0_S_0/B_0/e.weight", data=h5py.Empty("f4"))
    with h5py.File(src / "fine.h5", "w") as f:
        f.create_dataset("R_0_E_0_S_1/B_0/s.weight", data=np.float32(3))
        f.create_dataset("R_0_E_0_S_1/B_0/z.weight", data=np.zeros((0, 4), np.float32))
    res = run_cli(src / "odd.h5", src / "fine.h5", dest, "-q")
    assert res.returncode == 1, res.stderr
    errors = error_lines(res.stderr)
    assert len(errors) == len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "odd.h5" in errors[0] and "empty (no dataspace)" in errors[0], errors
    got = store_contents(dest)
    assert sorted(got) == ["R_0_E_0_S_1_B_0/s.weight", "R_0_E_0_S_1_B_0/z.weight"]
    assert got["R_0_E_0_S_1_B_0/s.weight"].shape == () and got["R_0_E_0_S_1_B_0/z.weight"].shape == (0, 4)
