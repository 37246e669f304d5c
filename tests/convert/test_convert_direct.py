"""Tensors stored straight from the source file: found at a checked offset, bit-exact,
and a source that changes between the read and the write is reported, not stored."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch
from convert_helpers import assert_same, bucket, run_cli, store_contents, to_numpy, write_buckets
from safetensors.torch import save_file

import gradstore
from gradstore.convert import convert, pt, source, worker

DIRECT_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int32, torch.int64,
                 torch.uint8, torch.bool]


def _tensor(dtype, seed=0, shape=(33, 7)):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) * 50
    return t > 0 if dtype == torch.bool else t.to(dtype)


def _refs(path, tmp_path, dtype=None) -> dict:
    """{tensor name: Ref} as a reader hands them to the writer."""
    out = {}
    for part in source.module_for(path).plan(path, dtype):
        batch = worker.read_part(part, dtype, str(tmp_path))
        out.update({r.key.rsplit("/", 1)[-1]: r for r in batch.refs})
        if batch.file is not None:
            os.unlink(batch.file)
    return out


@pytest.mark.parametrize("dtype", DIRECT_DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_pt_tensors_at_their_file_offset_round_trip_bit_exact(src, dest, tmp_path, dtype):
    tensors = {"w": _tensor(dtype), "b": _tensor(dtype, 1, (5,)), "s": _tensor(dtype, 2, ())}
    path = src / "R_0_E_0_S_0_B_0.pt"
    torch.save(tensors, path)
    refs = _refs(path, tmp_path)
    raw = path.read_bytes()
    for name, t in tensors.items():
        ref = refs[name]
        assert ref.in_source, name
        expected = to_numpy(t)
        assert raw[ref.offset:ref.offset + ref.nbytes] == expected.tobytes(), name
    report = convert([src], dest, jobs=0)
    assert report.ok and report.tensors_written == 3
    assert_same(store_contents(dest), {f"R_0_E_0_S_0_B_0/{m}": to_numpy(t) for m, t in tensors.items()})
    with gradstore.open(dest) as gs:
        assert gs.entry("R_0_E_0_S_0_B_0/w").checksum == refs["w"].checksum


def test_views_go_direct_where_contiguous_and_are_copied_out_otherwise(src, dest, tmp_path):
    base = torch.arange(40, dtype=torch.float32).reshape(8, 5)
    tensors = {"t": base.t(), "slice": base[2:4], "strided": base[:, ::2], "whole": base,
               "empty": torch.empty(0, 3)}
    path = src / "R_0_E_0_S_0_B_0.pt"
    torch.save(tensors, path)
    refs = _refs(path, tmp_path)
    assert {n: r.in_source for n, r in refs.items()} == {
        "t": False, "slice": True, "strided": False, "whole": True, "empty": False}
    assert refs["slice"].offset == refs["whole"].offset + 2 * 5 * 4   # a view into the storage
    convert([src], dest, jobs=0)
    assert_same(store_contents(dest), {f"R_0_E_0_S_0_B_0/{m}": to_numpy(t) for m, t in tensors.items()})


def test_legacy_torch_files_are_copied_out(src, dest, tmp_path):
    t = bucket(4, torch.bfloat16)
    path = src / "R_0_E_0_S_0_B_0.pt"
    torch.save(t, path, _use_new_zipfile_serialization=False)
    assert not any(r.in_source for r in _refs(path, tmp_path).values())
    assert convert([src], dest, jobs=0).ok
    assert_same(store_contents(dest), {f"R_0_E_0_S_0_B_0/{m}": to_numpy(v) for m, v in t.items()})


def test_a_wrong_offset_is_caught_by_the_reader_and_the_tensor_copied_out(src, dest, tmp_path, monkeypatch):
    tensors = bucket(5)
    torch.save(tensors, src / "R_0_E_0_S_0_B_0.pt")
    real = pt._offsets
    monkeypatch.setattr(pt, "_offsets", lambda path, ts: [o if o is None else o + 4 for o in real(path, ts)])
    assert not any(r.in_source for r in _refs(src / "R_0_E_0_S_0_B_0.pt", tmp_path).values())
    assert convert([src], dest, jobs=0).ok
    assert_same(store_contents(dest), {f"R_0_E_0_S_0_B_0/{m}": to_numpy(v) for m, v in tensors.items()})


def _change_after_read(monkeypatch, victim, change):
    real_read = worker.read_part

    def read_then_change(part, dtype, spool):
        batch = real_read(part, dtype, spool)
        if part.path == str(victim):
            assert any(r.in_source for r in batch.refs)
            change()
        return batch

    monkeypatch.setattr(worker, "read_part", read_then_change)


@pytest.mark.parametrize("how", ["rewritten", "bytes-in-place"])
def test_a_source_changed_between_read_and_write_is_reported_not_stored(src, dest, monkeypatch, how):
    expected = write_buckets(src, 3)
    victim = src / "R_0_E_0_S_1_B_0.pt"

    def change():
        if how == "rewritten":   # the producer saves new gradients under the same name
            torch.save(bucket(12345), victim)
        else:                    # same size, same mtime: only the bytes tell
            st = victim.stat()
            data = bytearray(victim.read_bytes())
            t = bucket(1)["model.layers.1.mlp.weight"].numpy().tobytes()
            at = bytes(data).find(t)
            data[at:at + 4] = b"\x00\x00\xc0\x7f"
            victim.write_bytes(bytes(data))
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert victim.stat().st_size == st.st_size

    _change_after_read(monkeypatch, victim, change)
    report = convert([src], dest, jobs=0)
    assert not report.ok and report.files_failed == 1
    (path, line), = report.errors
    assert path == str(victim) and "changed after it was read" in line and "not stored" in line
    got = store_contents(dest)
    assert not any("S_1" in k and k.endswith("layers.1.mlp.weight") for k in got)
    assert_same({k: v for k, v in got.items() if "S_1" not in k},
                {k: v for k, v in expected.items() if "S_1" not in k})
    for k, v in got.items():   # whatever of the victim was stored is what was read
        assert v.tobytes() == expected[k].tobytes()


def test_h5_contiguous_datasets_go_direct_others_are_copied_out(src, dest, tmp_path):
    w = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    with h5py.File(src / "pack_000.h5", "w") as f:
        f["/R_0_E_0_S_5/B_0/w"] = w
        f["/R_0_E_0_S_5/B_0/i"] = np.arange(10, dtype=np.int64)
        f["/R_0_E_0_S_5/B_0/be"] = w.astype(">f4")
        f.create_dataset("/R_0_E_0_S_5/B_0/gz", data=w, chunks=(8, 8), compression="gzip")
    refs = _refs(src / "pack_000.h5", tmp_path)
    assert {n: r.in_source for n, r in refs.items()} == {"w": True, "i": True, "be": False, "gz": False}
    assert convert([src], dest, jobs=0).ok
    assert_same(store_contents(dest), {"R_0_E_0_S_5_B_0/w": w, "R_0_E_0_S_5_B_0/i": np.arange(10),
                                       "R_0_E_0_S_5_B_0/be": w, "R_0_E_0_S_5_B_0/gz": w})


def test_h5_dtype_cast_is_copied_out(src, dest, tmp_path):
    t = bucket(3, torch.bfloat16)
    with h5py.File(src / "pack_000.h5", "w") as f:
        for m, v in t.items():
            f[f"/R_0_E_0_S_1/B_0/{m}"] = v.float().numpy()
    assert not any(r.in_source for r in _refs(src / "pack_000.h5", tmp_path, "bfloat16").values())
    assert convert([src], dest, jobs=0, dtype="bfloat16").ok
    assert_same(store_contents(dest), {f"R_0_E_0_S_1_B_0/{m}": to_numpy(v) for m, v in t.items()})


def test_safetensors_go_direct(src, dest, tmp_path):
    t = {"w": _tensor(torch.bfloat16), "h": _tensor(torch.float16, 1), "n": _tensor(torch.int64, 2),
         "s": _tensor(torch.float32, 3, ())}
    save_file(t, str(src / "R_2_E_0_S_9_B_1.safetensors"))
    assert all(r.in_source for r in _refs(src / "R_2_E_0_S_9_B_1.safetensors", tmp_path).values())
    assert convert([src], dest, jobs=0).ok
    assert_same(store_contents(dest), {f"R_2_E_0_S_9_B_1/{m}": to_numpy(v) for m, v in t.items()})


def test_readers_in_processes_store_straight_from_the_sources(src, dest):
    expected = write_buckets(src, 4, dtype=torch.bfloat16)
    base = torch.arange(40, dtype=torch.float16).reshape(8, 5)
    torch.save({"t": base.t(), "slice": base[2:4]}, src / "R_1_E_0_S_0_B_0.pt")
    expected.update({"R_1_E_0_S_0_B_0/t": to_numpy(base.t()), "R_1_E_0_S_0_B_0/slice": to_numpy(base[2:4])})
    r = run_cli(src, dest, "-j", 2)
    assert r.returncode == 0, r.stderr
    assert_same(store_contents(dest), expected)
