"""Encoded variants in the store, and the size accounting built on them."""
from __future__ import annotations

import csv
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import gradstore

EG = "eg:k=auto,scale=1e6,remap=rank"


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "v.gs"
    with gradstore.open(path, "a") as gs:
        for s in range(2):
            gs.write_bucket(f"R_0_E_0_S_{s}_B_0", {
                "mlp.up_proj.weight": rng.laplace(0, 1e-4, (64, 32)).astype(np.float32),
                "norm.weight": rng.laplace(0, 1e-3, 64).astype(ml_dtypes.bfloat16),
                "counts": rng.integers(-50, 50, 100).astype(np.int32)})
    return path


def test_lossless_variant_round_trips_and_is_idempotent(store):
    with gradstore.open(store, "a") as gs:
        first = gs.encode("zstd:level=3")
        assert len(first.written) == 6 and not first.skipped and not first.failed
        again = gs.encode("zstd:level=3")
        assert again.written == [] and len(again.skipped) == 6
        # the spec is canonicalised: a different spelling is the same variant
        assert gs.encode("zstd", keys=["R_0_E_0_S_0_B_0/counts"]).skipped == ["R_0_E_0_S_0_B_0/counts"]
    with gradstore.open(store) as gs:
        for key in gs.keys():
            got = gs.variant(key, "zstd:level=3", verify=True)
            assert got.dtype == gs[key].dtype and got.tobytes() == gs[key].tobytes()
        assert gs.variant_specs("R_0_E_0_S_1_B_0/counts") == ["zstd:level=3"]
        assert gs.info()["variants"] == 6
        with pytest.raises(KeyError, match="zlib"):
            gs.variant("R_0_E_0_S_0_B_0/counts", "zlib")


def test_lossy_eg_variant_records_error_and_decodes_quantized(store):
    key = "R_0_E_0_S_0_B_0/mlp.up_proj.weight"
    with gradstore.open(store, "a") as gs:
        gs.encode(EG, keys=[key, "R_0_E_0_S_0_B_0/counts"])
        raw = np.array(gs[key])
        got = gs.variant(key, EG)
        assert got.dtype == np.float32
        want = (np.rint(raw.astype(np.float64) * 1e6) / 1e6).astype(np.float32)
        assert np.array_equal(got, want)
        e = gs.variant_entry(key, EG)
        assert e.extra["lossless"] is False
        diff = got.astype(np.float64) - raw
        assert e.extra["err"]["max_abs"] == pytest.approx(np.abs(diff).max())
        assert e.extra["err"]["rel_l2"] == pytest.approx(np.linalg.norm(diff) / np.linalg.norm(raw))
        assert e.extra["nbits"] <= 8 * e.payload_len
        # integers through eg are lossless
        counts = gs.variant("R_0_E_0_S_0_B_0/counts", EG)
        assert np.array_equal(counts, gs["R_0_E_0_S_0_B_0/counts"])


def test_overwritten_tensor_is_encoded_again(store):
    key = "R_0_E_0_S_1_B_0/counts"
    with gradstore.open(store, "a") as gs:
        gs.encode("zlib", keys=[key])
        gs.write(key, np.arange(10, dtype=np.int32), overwrite=True)
        assert gs.encode("zlib", keys=[key]).written == [key]
        assert np.array_equal(gs.variant(key, "zlib"), np.arange(10))


def test_not_encodable_keys_are_reported_and_others_go_on(tmp_path):
    with gradstore.open(tmp_path / "n.gs", "a") as gs:
        gs.write("R_0_E_0_S_0_B_0/ok", np.full(10, 1e-3, np.float32))
        gs.write("R_0_E_0_S_0_B_0/nan", np.array([1.0, np.nan], np.float32))
        gs.write("R_0_E_0_S_0_B_0/huge", np.array([1e30], np.float64))
        res = gs.encode("eg:k=0,scale=1e6")
        assert res.written == ["R_0_E_0_S_0_B_0/ok"]
        assert set(res.failed) == {"R_0_E_0_S_0_B_0/nan", "R_0_E_0_S_0_B_0/huge"}
        assert "NaN" in res.failed["R_0_E_0_S_0_B_0/nan"]
        rows = gs.sizes(["eg:k=0,scale=1e6"], group_by=("step",))
        eg_row = rows[1]
        assert eg_row["keys"] == 1 and eg_row["not_encodable"] == 2


def test_sizes_rows_are_consistent(store):
    with gradstore.open(store, "a") as gs:
        gs.encode(EG, step=0)  # step 0 from stored variants, step 1 from trial encodes
        rows = gs.sizes([EG, "zstd:level=3"], group_by=("step",))
        assert [(r["group"], r["codec"].split(":")[0]) for r in rows] == [
            ("step=0", "raw"), ("step=0", "eg"), ("step=0", "zstd"),
            ("step=1", "raw"), ("step=1", "eg"), ("step=1", "zstd")]
        for r in rows:
            assert r["keys"] == 3 and r["elements"] == 64 * 32 + 64 + 100
            assert r["ratio_theory"] == pytest.approx(r["bits"] / (8 * r["raw_bytes"]))
            assert r["saving_os"] == pytest.approx(1 - r["disk_bytes"] / rows[0]["disk_bytes"])
            assert r["payload_bytes"] * 8 >= r["bits"]
        eg0, eg1 = rows[1], rows[4]
        assert eg0["lossless"] is False and eg0["max_abs_err"] <= 0.5e-6 * 1.01
        assert 0 < eg0["efficiency"] <= 1.0 + 1e-9
        assert eg0["entropy_per_element"] <= eg0["bits_per_element"]
        assert rows[2]["lossless"] is True and rows[2]["max_abs_err"] is None
        # trial encodes and stored variants measure the same way
        gs.encode(EG, step=1)
        again = gs.sizes([EG], group_by="step")
        assert again[3]["bits"] == eg1["bits"] and again[3]["disk_bytes"] == eg1["disk_bytes"]
        per_key = gs.sizes(["zlib"], step=0, module="counts")
        assert [r["group"] for r in per_key] == ["R_0_E_0_S_0_B_0/counts"] * 2
        with pytest.raises(ValueError, match="cannot group by"):
            gs.sizes(["zlib"], group_by=("layer",))
        with pytest.raises(gradstore.UnknownCodecError, match="available"):
            gs.sizes(["nope"])


def test_variants_survive_reopen_and_rebuild(store):
    with gradstore.open(store, "a") as gs:
        gs.encode("zlib:level=6")
    for p in (store / "main").glob("index*"):
        p.unlink()
    gradstore.repair(store)
    with gradstore.open(store) as gs:
        assert gs.info()["variants"] == 6
        assert gs.verify() == []
        for key in gs.keys():
            assert gs.variant(key, "zlib:level=6").tobytes() == gs[key].tobytes()


def test_report_cli(store, tmp_path):
    out_csv = tmp_path / "r.csv"
    proc = subprocess.run([sys.executable, "-m", "gradstore", "report", str(store), "--codec", EG,
                           "--codec", "zlib", "--group-by", "rank,step", "--csv", str(out_csv)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "rank=0,step=1" in proc.stdout and "eg:k=auto" in proc.stdout
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 6 and {r["codec"].split(":")[0] for r in rows} == {"raw", "eg", "zlib"}
    bad = subprocess.run([sys.executable, "-m", "gradstore", "report", str(store), "--codec", "eg:k=-3"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr


def test_parallel_sizes_equal_serial(store):
    with gradstore.open(store) as gs:
        specs = [EG, "zlib"]
        serial = gs.sizes(specs, group_by=("step",))
        parallel = gs.sizes(specs, group_by=("step",), jobs=2)
        per_key_serial = gs.sizes(specs)
        per_key_parallel = gs.sizes(specs, jobs=2)
    assert parallel == serial
    assert per_key_parallel == per_key_serial


@pytest.mark.parametrize("direct_io", [False, True])
def test_encode_held_stores_every_codec_in_one_run(tmp_path, direct_io):
    """Capture's path: the variants of arrays just written, encoded from the
    caller's arrays, all codecs in one run; what a codec cannot code is named."""
    from gradstore.variants import encode_held
    rng = np.random.default_rng(3)
    tensors = {"w": rng.laplace(0, 1e-4, (64, 32)).astype(np.float32),
               "b": rng.laplace(0, 1e-3, 64).astype(ml_dtypes.bfloat16),
               "nan": np.array([1e-4, np.nan, -2e-5], dtype=np.float32)}
    with gradstore.open(tmp_path / "h.gs", "w", direct_io=direct_io) as gs:
        gs.write_bucket("R_0_E_0_S_0_B_0", tensors)
        arrays = {f"R_0_E_0_S_0_B_0/{m}": a for m, a in tensors.items()}
        runs, append_many = [], gs._writer.append_many

        def counted(kind, items, checks=None):
            runs.append(len(items))
            return append_many(kind, items, checks)

        gs._writer.append_many = counted
        failed = encode_held(gs, [EG, "fpx"], arrays)
        assert runs == [5]   # 3 fpx variants and 2 eg ones (no NaN), one write call
        eg = gradstore.codecs.get_codec(EG)
        fpx = gradstore.codecs.get_codec("fpx")
        assert set(failed) == {eg.spec, fpx.spec}
        assert list(failed[eg.spec]) == ["R_0_E_0_S_0_B_0/nan"] and "NaN" in failed[eg.spec]["R_0_E_0_S_0_B_0/nan"]
        assert failed[fpx.spec] == {}
        for key, arr in arrays.items():
            assert gs.variant_entry(key, fpx.spec).extra["src"] == gs.entry(key).checksum
            assert gs.variant(key, fpx.spec, verify=True).tobytes() == arr.tobytes()
            if not key.endswith("/nan"):
                again = eg.decode(eg.encode(arr).payload, arr.dtype, arr.shape)
                assert gs.variant(key, eg.spec, verify=True).tobytes() == again.tobytes()
