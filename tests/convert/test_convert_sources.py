"""Every source layout, read from real files, lands under the right keys with its exact bytes."""
from __future__ import annotations

import h5py
import ml_dtypes
import numpy as np
import torch
from convert_helpers import assert_same, bucket, store_contents, to_numpy
from safetensors.torch import save_file

import gradstore
from gradstore.convert import convert

ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8,
              torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool]


def _tensor(dtype, seed=0, shape=(16, 4)):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g) * 50
    return t > 0 if dtype == torch.bool else t.to(dtype)


def test_pt_dict_keeps_every_dtype_exactly(src, dest):
    tensors = {f"m.{str(dt).split('.')[-1]}": _tensor(dt, i) for i, dt in enumerate(ALL_DTYPES)}
    torch.save(tensors, src / "R_0_E_1_S_5_B_3.pt")
    report = convert([src], dest, jobs=0)
    assert report.ok and report.tensors_written == len(tensors)
    expected = {f"R_0_E_1_S_5_B_3/{m}": to_numpy(t) for m, t in tensors.items()}
    assert_same(store_contents(dest), expected)
    with gradstore.open(dest) as gs:
        e = gs.entry("R_0_E_1_S_5_B_3/m.bfloat16")
        assert e.dtype == "bfloat16"
        # the stored checksum is that of the source tensor's own bytes
        raw = tensors["m.bfloat16"].view(torch.int16).numpy().tobytes()
        assert e.checksum == gradstore.checksum(np.frombuffer(raw, ml_dtypes.bfloat16))


def test_pt_nested_dicts_join_names_with_slash(src, dest):
    a, b, c = (_tensor(torch.float32, i) for i in range(3))
    torch.save({"encoder": {"layer0": {"w": a, "b": b}}, "head": c}, src / "R_1_E_0_S_2_B_0.pt")
    convert([src], dest, jobs=0)
    assert_same(store_contents(dest), {
        "R_1_E_0_S_2_B_0/encoder/layer0/w": a.numpy(),
        "R_1_E_0_S_2_B_0/encoder/layer0/b": b.numpy(),
        "R_1_E_0_S_2_B_0/head": c.numpy()})


def test_pt_single_tensor_is_stored_under_the_stem(src, dest):
    t = _tensor(torch.bfloat16)
    torch.save(t, src / "grad_snapshot.pth")
    convert([src], dest, jobs=0)
    assert_same(store_contents(dest), {"grad_snapshot": to_numpy(t)})


def test_prefix_comes_from_the_bucket_name_in_the_file_name_else_the_stem(src, dest):
    t = _tensor(torch.float32)
    torch.save({"w": t}, src / "grads-R_00_E_1_S_07_B_2.pt")   # leading zeros, extra text
    torch.save({"w": t}, src / "step7.pt")
    convert([src], dest, jobs=0)
    assert sorted(store_contents(dest)) == ["R_0_E_1_S_7_B_2/w", "step7/w"]
    with gradstore.open(dest) as gs:
        assert gs.keys(step=7) == ["R_0_E_1_S_7_B_2/w"]


def test_pt_views_and_noncontiguous_tensors_store_their_values(src, dest):
    base = torch.arange(40, dtype=torch.float32).reshape(8, 5)
    torch.save({"t": base.t(), "slice": base[2:4], "strided": base[:, ::2]}, src / "R_0_E_0_S_0_B_0.pt")
    convert([src], dest, jobs=0)
    got = store_contents(dest)
    assert np.array_equal(got["R_0_E_0_S_0_B_0/t"], base.t().numpy())
    assert np.array_equal(got["R_0_E_0_S_0_B_0/slice"], base[2:4].numpy())
    assert np.array_equal(got["R_0_E_0_S_0_B_0/strided"], base[:, ::2].numpy())


def test_h5_pack_layout_becomes_structured_keys(src, dest):
    b0, b1 = bucket(1), bucket(2)
    with h5py.File(src / "pack_000.h5", "w") as f:
        for m, t in b0.items():
            f[f"/R_0_E_0_S_5/B_0/{m}"] = t.numpy()
        for m, t in b1.items():
            f[f"/R_1_E_0_S_5/B_3/{m}"] = t.numpy()
    report = convert([src], dest, jobs=0)
    assert report.ok
    expected = {f"R_0_E_0_S_5_B_0/{m}": t.numpy() for m, t in b0.items()}
    expected.update({f"R_1_E_0_S_5_B_3/{m}": t.numpy() for m, t in b1.items()})
    assert_same(store_contents(dest), expected)


def test_h5_other_layouts_use_dataset_paths_as_keys(src, dest):
    a = np.arange(12, dtype=">f4").reshape(3, 4)   # big-endian on disk
    b = np.arange(5, dtype=np.int64)
    with h5py.File(src / "misc.hdf5", "w") as f:
        f["/grads/layer1/weight"] = a
        f["/step"] = b
    convert([src], dest, jobs=0)
    assert_same(store_contents(dest), {"grads/layer1/weight": a.astype("<f4"), "step": b})


def test_h5_dtype_declares_what_the_pack_lost(src, dest):
    t = bucket(3, torch.bfloat16)
    with h5py.File(src / "pack_000.h5", "w") as f:
        for m, v in t.items():
            f[f"/R_0_E_0_S_1/B_0/{m}"] = v.float().numpy()   # the old factory's float32 copy
        f["/R_0_E_0_S_1/B_0/count"] = np.arange(3, dtype=np.int32)  # not a float: untouched
    report = convert([src], dest, jobs=0, dtype="bfloat16")
    assert report.ok
    expected = {f"R_0_E_0_S_1_B_0/{m}": to_numpy(v) for m, v in t.items()}
    expected["R_0_E_0_S_1_B_0/count"] = np.arange(3, dtype=np.int32)
    assert_same(store_contents(dest), expected)


def test_h5_dtype_that_would_lose_data_is_an_error(src, dest):
    with h5py.File(src / "pack_000.h5", "w") as f:
        f["/R_0_E_0_S_1/B_0/w"] = np.float32([1.0, 1.0000001])   # not bf16 values
    report = convert([src], dest, jobs=0, dtype="bfloat16")
    assert not report.ok
    (path, line), = report.errors
    assert "not exactly bfloat16" in line and "R_0_E_0_S_1/B_0/w" in line
    assert store_contents(dest) == {}


def test_safetensors_files(src, dest):
    t = {"w": _tensor(torch.bfloat16), "b": _tensor(torch.float32, 1), "n": _tensor(torch.int64, 2)}
    save_file(t, str(src / "R_2_E_0_S_9_B_1.safetensors"))
    report = convert([src], dest, jobs=0)
    assert report.ok
    assert_same(store_contents(dest), {f"R_2_E_0_S_9_B_1/{m}": to_numpy(v) for m, v in t.items()})


def test_directories_are_searched_recursively_and_other_files_ignored(src, dest):
    (src / "rank1" / "deep").mkdir(parents=True)
    torch.save(bucket(0), src / "R_0_E_0_S_0_B_0.pt")
    torch.save(bucket(1), src / "rank1" / "deep" / "R_1_E_0_S_0_B_0.pt")
    (src / "notes.txt").write_text("not a source")
    (src / ".R_0_E_0_S_1_B_0.pt.tmp").write_bytes(b"partial")
    report = convert([src], dest, jobs=0)
    assert report.ok and report.files_converted == 2
    with gradstore.open(dest) as gs:
        assert gs.buckets() == ["R_0_E_0_S_0_B_0", "R_1_E_0_S_0_B_0"]
