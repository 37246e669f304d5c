"""export: subsets as plain .pt, .safetensors and HDF5 files that convert back unchanged."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from convert_helpers import assert_same, bucket, store_contents, to_numpy
from safetensors import safe_open

import gradstore
from gradstore.convert import convert, export
from gradstore.convert.cli import export_main


@pytest.fixture
def store(tmp_path):
    """A store with bf16 and fp32 buckets over ranks and steps, and a plain key."""
    path = tmp_path / "run.gs"
    with gradstore.open(path, "a") as gs:
        for rank in range(2):
            for step in range(3):
                dtype = torch.bfloat16 if rank == 0 else torch.float32
                gs.write_bucket(f"R_{rank}_E_0_S_{step}_B_0",
                                bucket(10 * rank + step, dtype, modules=2, size=16))
        gs.write("notes/loss_scale", np.float32([1024.0]))
    return path


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "h5"])
def test_export_round_trips_through_convert(store, tmp_path, fmt):
    out = tmp_path / f"share_{fmt}"
    report = export(store, out, format=fmt)
    assert report.tensors == 13
    back = tmp_path / f"back_{fmt}.gs"
    assert convert([out], back, jobs=0).ok
    assert_same(store_contents(back), store_contents(store))


def test_exported_files_are_readable_without_gradstore(store, tmp_path):
    export(store, tmp_path / "pt", format="pt", rank=0, step=1)
    export(store, tmp_path / "st", format="safetensors", rank=0, step=1)
    export(store, tmp_path / "h5", format="h5", rank=0, step=1)
    want = {m: to_numpy(t) for m, t in bucket(1, torch.bfloat16, modules=2, size=16).items()}

    assert sorted(p.name for p in (tmp_path / "pt").iterdir()) == ["R_0_E_0_S_1_B_0.pt"]
    loaded = torch.load(tmp_path / "pt" / "R_0_E_0_S_1_B_0.pt", weights_only=True)
    assert {m: to_numpy(t) for m, t in loaded.items()}.keys() == want.keys()
    assert all(loaded[m].dtype == torch.bfloat16 and to_numpy(loaded[m]).tobytes() == want[m].tobytes()
               for m in want)
    with safe_open(str(tmp_path / "st" / "R_0_E_0_S_1_B_0.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(want)
        assert all(to_numpy(f.get_tensor(m)).tobytes() == want[m].tobytes() for m in want)
    with h5py.File(tmp_path / "h5" / "pack_000.h5", "r") as f:    # bf16 kept exactly as float32
        for m, v in want.items():
            ds = f[f"/R_0_E_0_S_1/B_0/{m}"]
            assert ds.attrs["gradstore_dtype"] == "bfloat16"
            assert np.array_equal(ds[()], v.astype(np.float32))


def test_export_filters_are_those_of_ls(store, tmp_path, capsys):
    rc = export_main([str(store), "--to", str(tmp_path / "sub"), "--format", "pt",
                      "--rank", "1", "--step", "0:2", "--module", "*.1.*"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [
        "R_1_E_0_S_0_B_0.pt", "R_1_E_0_S_1_B_0.pt"]
    assert list(torch.load(tmp_path / "sub" / "R_1_E_0_S_0_B_0.pt", weights_only=True)) == [
        "model.layers.1.mlp.weight"]
    assert "2 tensors" in capsys.readouterr().err


def test_h5_packs_roll_over_at_the_cap(store, tmp_path):
    report = export(store, tmp_path / "packs", format="h5", pack_size=4096)
    assert [p.name for p in report.files][:2] == ["pack_000.h5", "pack_001.h5"]
    assert sorted(p.name for p in (tmp_path / "packs").iterdir()) == [p.name for p in report.files]
    back = tmp_path / "back.gs"
    assert convert([tmp_path / "packs"], back, jobs=0).ok
    assert_same(store_contents(back), store_contents(store))


def test_export_mistakes_are_one_line(store, tmp_path, capsys):
    out = tmp_path / "once"
    assert export_main([str(store), "--to", str(out), "--format", "pt", "-q"]) == 0
    before = sorted(p.name for p in out.iterdir())
    assert export_main([str(store), "--to", str(out), "--format", "pt"]) == 2     # no overwrite
    assert export_main([str(store), "--to", str(out), "--rank", "7"]) == 2        # nothing selected
    assert export_main([str(tmp_path / "nostore"), "--to", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(ln.startswith("gradstore export: error: ") for ln in err)
    assert "already exists" in err[0] and "no key matches" in err[1] and "no such store" in err[2]
    assert sorted(p.name for p in out.iterdir()) == before


EG = "eg:k=0,scale=10,sign=bit"   # coarse: really lossy on these values


@pytest.fixture
def encoded_store(tmp_path):
    """Steps 0-1 held as fpx and eg variants only (no tensors), step 2 as tensors."""
    path = tmp_path / "enc.gs"
    with gradstore.open(path, "a") as gs:
        for step in range(2):
            gs.write_encoded(f"R_0_E_0_S_{step}_B_0", bucket(step, torch.bfloat16, modules=2, size=16),
                             ["fpx", EG])
        gs.write_bucket("R_0_E_0_S_2_B_0", bucket(2, torch.bfloat16, modules=2, size=16))
    return path


@pytest.mark.parametrize("fmt", ["pt", "h5"])
def test_export_decodes_encoded_only_keys_with_a_lossless_codec_bit_exact(encoded_store, tmp_path,
                                                                          fmt, capsys):
    out = tmp_path / "out"
    assert export_main([str(encoded_store), "--to", str(out), "--format", fmt, "--codec", "fpx"]) == 0
    err = capsys.readouterr().err
    assert "6 tensors" in err and "4 decoded from fpx variants (exact)" in err
    back = tmp_path / "back.gs"
    assert convert([out], back, jobs=0).ok
    want = {f"R_0_E_0_S_{s}_B_0/{m}": to_numpy(t)
            for s in range(3) for m, t in bucket(s, torch.bfloat16, modules=2, size=16).items()}
    assert_same(store_contents(back), want)


def test_export_of_lossy_variants_gives_their_decoded_values_and_says_so(encoded_store, tmp_path,
                                                                          capsys):
    out = tmp_path / "out"
    assert export_main([str(encoded_store), "--to", str(out), "--codec", EG, "--step", "0"]) == 0
    assert "decoded from" in (err := capsys.readouterr().err) and "lossy" in err
    loaded = torch.load(out / "R_0_E_0_S_0_B_0.pt", weights_only=True)
    exact = bucket(0, torch.bfloat16, modules=2, size=16)
    with gradstore.open(encoded_store) as gs:
        for m, t in loaded.items():
            assert t.dtype == torch.bfloat16
            assert to_numpy(t).tobytes() == gs.variant(f"R_0_E_0_S_0_B_0/{m}", EG).tobytes()
            assert to_numpy(t).tobytes() != to_numpy(exact[m]).tobytes()   # really the lossy values


def test_export_without_codec_says_what_it_left_out(encoded_store, tmp_path, capsys):
    assert export_main([str(encoded_store), "--to", str(tmp_path / "mixed")]) == 0
    err = capsys.readouterr().err
    assert "warning: 4 keys stored as encoded variants only were left out" in err
    assert sorted(p.name for p in (tmp_path / "mixed").iterdir()) == ["R_0_E_0_S_2_B_0.pt"]
    assert export_main([str(encoded_store), "--to", str(tmp_path / "only"), "--step", "0:2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stored as encoded variants only" in err[0] and "--codec" in err[0]
    assert not (tmp_path / "only").exists() or not any((tmp_path / "only").iterdir())


def test_export_with_a_codec_some_keys_lack_writes_nothing(encoded_store, tmp_path, capsys):
    for spec, why in [("zstd", "no 'zstd:level=3' variant"), ("nosuch", "nosuch")]:
        out = tmp_path / spec
        assert export_main([str(encoded_store), "--to", str(out), "--codec", spec]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gradstore export: error: ") and why in err[0], err
        assert not out.exists() or not any(out.iterdir())
