"""Round trips, zero copy, rollover, selection, overwrite, bad input, damage and repair."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import gradstore
from gradstore import dtypes

SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (4, 5), (2, 3, 4), (65,)]


def sample(dtype_name: str, shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = dtypes.to_numpy(dtype_name)
    n = int(np.prod(shape, dtype=np.int64))
    if dtype_name == "bool":
        return rng.integers(0, 2, n).astype(bool).reshape(shape)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, n, dtype=dt, endpoint=True).reshape(shape)
    vals = rng.standard_normal(n) * 10.0 ** rng.integers(-8, 4, n)
    return vals.astype(dt).reshape(shape)


def bits(a: np.ndarray) -> bytes:
    return a.reshape(-1).view(np.uint8).tobytes()


def test_round_trip_every_dtype_and_shape(tmp_path):
    path = tmp_path / "rt.gs"
    written = {}
    with gradstore.open(path, "a") as gs:
        for i, name in enumerate(dtypes.NAMES):
            for j, shape in enumerate(SHAPES):
                key = f"R_0_E_0_S_{i}_B_{j}/m.{name}"
                written[key] = sample(name, shape, seed=i * 100 + j)
                gs.write(key, written[key])
    with gradstore.open(path) as gs:
        assert len(gs) == len(written)
        for key, want in written.items():
            got = gs.read(key, verify=True)
            assert got.dtype == want.dtype, key
            assert got.shape == want.shape, key
            assert bits(got) == bits(want), key


def test_special_float_values_are_bit_exact(tmp_path):
    vals = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, 3.4e38], np.float32)
    vals_bf = vals.astype(ml_dtypes.bfloat16)
    with gradstore.open(tmp_path / "s.gs", "a") as gs:
        gs.write("f32", vals)
        gs.write("bf16", vals_bf)
        assert bits(gs["f32"]) == bits(vals)
        assert bits(gs["bf16"]) == bits(vals_bf)


def test_reads_are_zero_copy_views_of_the_mapping(tmp_path):
    a = np.arange(1000, dtype=np.float32).reshape(10, 100)
    with gradstore.open(tmp_path / "z.gs", "a") as gs:
        gs.write("R_0_E_0_S_0_B_0/w", a)
    gs = gradstore.open(tmp_path / "z.gs")
    v = gs["R_0_E_0_S_0_B_0/w"]
    assert not v.flags.owndata
    assert not v.flags.writeable
    assert v.ctypes.data % 64 == 0
    e = gs.entry("R_0_E_0_S_0_B_0/w")
    mapping = gs._namespaces[e.ns].maps.get(e.stream, e.seq, e.payload_offset + e.payload_len)
    whole = np.frombuffer(mapping, np.uint8)
    assert np.shares_memory(v, whole)
    assert v.ctypes.data == whole.ctypes.data + e.payload_offset
    with pytest.raises(ValueError):
        v[0, 0] = 1
    gs.close()
    assert v[3, 7] == 307  # views outlive the store object


def test_torch_view_bf16(tmp_path):
    """More in tests/test_torch_views.py: private copy-on-write mappings, in-place ops."""
    torch = pytest.importorskip("torch")
    t = torch.randn(64, 32).to(torch.bfloat16)
    with gradstore.open(tmp_path / "t.gs", "a") as gs:
        gs.write("R_1_E_0_S_0_B_0/w", t)
        gs.write("R_1_E_0_S_0_B_0/empty", torch.zeros(0, 3))
    gs = gradstore.open(tmp_path / "t.gs")
    got = gs.torch("R_1_E_0_S_0_B_0/w")
    assert got.dtype == torch.bfloat16 and torch.equal(got, t)
    assert gs.torch("R_1_E_0_S_0_B_0/empty").shape == (0, 3)


def test_rollover_by_segment_size(tmp_path):
    path = tmp_path / "roll.gs"
    arrays = {f"R_0_E_0_S_{s}_B_0/w": np.full(3000, s, np.float32) for s in range(20)}
    with gradstore.open(path, "a", segment_size="32KiB") as gs:
        for k, a in arrays.items():
            gs.write(k, a)
        gs.write("big", np.zeros(20000, np.float32))  # larger than a segment: alone in one
    segs = sorted(p.name for p in (path / "main").glob("data-*.bin"))
    assert len(segs) >= 3
    assert all(os.path.getsize(path / "main" / s) <= 32 * 1024 for s in segs[:-1])
    with gradstore.open(path) as gs:
        for k, a in arrays.items():
            assert np.array_equal(gs[k], a)
        assert gs["big"].shape == (20000,)
        # the marker remembers the segment size chosen at creation
        assert gs.segment_size == 32 * 1024


def test_parse_size():
    assert gradstore.parse_size("1.8TB") == 1_800_000_000_000
    assert gradstore.parse_size("4GiB") == 4 << 30
    assert gradstore.parse_size(8192) == 8192
    for bad in ("lots", "12XB", "-1GB", 10):
        with pytest.raises(ValueError):
            gradstore.parse_size(bad)


def test_structured_selection(tmp_path):
    path = tmp_path / "sel.gs"
    mods = ["model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"]
    with gradstore.open(path, "a") as gs:
        for r in range(2):
            for s in (2, 10, 11, 25):
                gs.write_bucket(f"R_{r}_E_0_S_{s}_B_{s % 3}", {m: np.zeros(2, np.float16) for m in mods})
        gs.write("notes/plain", np.zeros(1))
    gs = gradstore.open(path)
    sel = gs.keys(rank=0, step=range(10, 20), module="*.mlp.*")
    assert sel == ["R_0_E_0_S_10_B_1/model.layers.0.mlp.up_proj.weight",
                   "R_0_E_0_S_11_B_2/model.layers.0.mlp.up_proj.weight"]
    assert gs.keys(step=[2, 25], module=["lm_head.*"], rank=1) == [
        "R_1_E_0_S_2_B_2/lm_head.weight", "R_1_E_0_S_25_B_1/lm_head.weight"]
    assert len(gs.keys(epoch=0, bucket=2)) == 2 * 2 * 3
    every = gs.keys()
    assert "notes/plain" == every[-1] and len(every) == 2 * 4 * 3 + 1
    # natural order: step 2 before step 10
    assert every[0].startswith("R_0_E_0_S_2_")
    assert "notes/plain" not in gs.keys(module="*")
    assert gs.buckets(rank=1, step=range(0, 11)) == ["R_1_E_0_S_2_B_2", "R_1_E_0_S_10_B_1"]
    b = gs.bucket("R_1_E_0_S_10_B_1")
    assert sorted(b) == sorted(mods) and all(v.dtype == np.float16 for v in b.values())
    with pytest.raises(KeyError):
        gs.bucket("R_9_E_0_S_0_B_0")
    with pytest.raises(TypeError):
        gs.keys(step="10")


def test_natural_order_and_selection_agree_with_key_parse():
    """select() parses each bucket name once; it must order and filter exactly as Key.parse."""
    import random
    from gradstore.keys import Selector, select, try_parse
    heads = ["R_0_E_0_S_2_B_0", "R_0_E_0_S_10_B_0", "R_01_E_0_S_2_B_0", "R_1_E_0_S_2_B_1", "R_0_E_0_S_2",
             "notes", "R_0_E_1_S_0_B_0"]
    mods = ["a", "b/c", "lm_head.weight", "model.layers.0.mlp.up_proj.weight"]
    keys = [f"{h}/{m}" for h in heads for m in mods] + ["plain", "R_0_E_0_S_2_B_0"]
    random.Random(0).shuffle(keys)

    def natural(k):
        p = try_parse(k)
        return (1, (), k) if p is None else (0, tuple(p[:4]), p.module)

    assert select(keys, Selector()) == sorted(keys, key=natural)
    for sel in ({"rank": 0}, {"step": range(1, 11), "module": "*.mlp.*"}, {"epoch": [1]}, {"module": "b*"}):
        want = sorted((k for k in keys if Selector(**sel).matches(try_parse(k))), key=natural)
        assert select(keys, Selector(**sel)) == want and want, sel


def test_key_parse():
    k = gradstore.Key.parse("R_3_E_1_S_250_B_12/model.layers.3.mlp/down_proj.weight")
    assert k == gradstore.Key(3, 1, 250, 12, "model.layers.3.mlp/down_proj.weight")
    assert str(k) == "R_3_E_1_S_250_B_12/model.layers.3.mlp/down_proj.weight"
    assert k.bucket_name == "R_3_E_1_S_250_B_12"
    for bad in ("R_0_E_0_S_5/x", "R_0_E_0_S_5_B_3", "R_01_E_0_S_5_B_3/x", "plain", "R_0_E_0_S_5_B_3/"):
        with pytest.raises(ValueError, match="not a structured key"):
            gradstore.Key.parse(bad)


def test_plain_keys_are_stored(tmp_path):
    with gradstore.open(tmp_path / "p.gs", "a") as gs:
        gs.write("some/plain key", np.ones(2))
        assert np.array_equal(gs["some/plain key"], np.ones(2))


def test_missing_key_and_overwrite(tmp_path):
    path = tmp_path / "o.gs"
    with gradstore.open(path, "a") as gs:
        gs.write("R_0_E_0_S_0_B_0/w", np.zeros(4))
        with pytest.raises(KeyError, match="R_0_E_0_S_0_B_0/nope"):
            gs["R_0_E_0_S_0_B_0/nope"]
        with pytest.raises(gradstore.KeyExistsError, match="overwrite=True"):
            gs.write("R_0_E_0_S_0_B_0/w", np.ones(4))
        assert np.array_equal(gs["R_0_E_0_S_0_B_0/w"], np.zeros(4))
        gs.write("R_0_E_0_S_0_B_0/w", np.ones(4), overwrite=True)
        assert np.array_equal(gs["R_0_E_0_S_0_B_0/w"], np.ones(4))
    with gradstore.open(path, "a") as gs:
        assert np.array_equal(gs["R_0_E_0_S_0_B_0/w"], np.ones(4))
        before, after = gs.compact()
        assert after < before
        assert np.array_equal(gs["R_0_E_0_S_0_B_0/w"], np.ones(4))
    with gradstore.open(path) as gs:
        assert len(gs) == 1 and np.array_equal(gs.read("R_0_E_0_S_0_B_0/w", verify=True), np.ones(4))
        assert gs.verify() == []


@pytest.mark.parametrize("key, value, exc, match", [
    ("", np.zeros(1), ValueError, "empty"),
    ("a\0b", np.zeros(1), ValueError, "NUL"),
    ("a//b", np.zeros(1), ValueError, "empty part"),
    ("/a", np.zeros(1), ValueError, "empty part"),
    ("a/", np.zeros(1), ValueError, "empty part"),
    (b"bytes", np.zeros(1), TypeError, "key must be a str"),
    ("k", [1, 2, 3], TypeError, "expected a numpy array"),
    ("k", "text", TypeError, "expected a numpy array"),
    ("k", np.array(["a", "b"]), ValueError, "unsupported dtype"),
    ("k", np.array([object()]), ValueError, "unsupported dtype"),
    ("k", np.zeros(2, np.complex64), ValueError, "unsupported dtype"),
])
def test_bad_input_is_rejected_and_nothing_written(tmp_path, key, value, exc, match):
    path = tmp_path / "bad.gs"
    with gradstore.open(path, "a") as gs:
        gs.write("keep", np.arange(3))
        size = gs.info()["disk_bytes"]
        with pytest.raises(exc, match=match):
            gs.write(key, value)
        with pytest.raises(exc, match=match):
            gs.write_bucket("R_0_E_0_S_0_B_0", {"ok": np.zeros(2), "bad": value} if key == "k" else {key: value})
        assert gs.info()["disk_bytes"] == size
        assert gs.keys() == ["keep"]
    with gradstore.open(path) as gs:
        assert gs.keys() == ["keep"]


def test_big_endian_and_non_contiguous_inputs(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4)
    with gradstore.open(tmp_path / "e.gs", "a") as gs:
        gs.write("be", a)
        gs.write("t", np.arange(12.0).reshape(3, 4).T)
        assert gs["be"].dtype == np.float32 and np.array_equal(gs["be"], a)
        assert np.array_equal(gs["t"], np.arange(12.0).reshape(3, 4).T)


def test_read_only_and_modes(tmp_path):
    path = tmp_path / "m.gs"
    with pytest.raises(FileNotFoundError):
        gradstore.open(path)
    with gradstore.open(path, "a") as gs:
        gs.write("a", np.zeros(1))
    with gradstore.open(path) as gs, pytest.raises(gradstore.ReadOnlyError):
        gs.write("b", np.zeros(1))
    with pytest.raises(FileExistsError):
        gradstore.open(path, "x")
    with gradstore.open(path, "w") as gs:
        assert len(gs) == 0
        gs.write("c", np.zeros(1))
    with gradstore.open(path) as gs:
        assert gs.keys() == ["c"]
    with pytest.raises(ValueError, match="mode"):
        gradstore.open(path, "rw")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(gradstore.FormatError, match="not a gradstore"):
        gradstore.open(tmp_path / "junk", "a")


def test_rank_namespaces_and_union(tmp_path):
    path = tmp_path / "ranks.gs"
    w0 = gradstore.open(path, "a", rank=0)
    w1 = gradstore.open(path, "a", rank=1)
    w0.write("R_0_E_0_S_0_B_0/w", np.zeros(3))
    w1.write("R_1_E_0_S_0_B_0/w", np.ones(3))
    with pytest.raises(ValueError, match="rank 1"):
        w0.write("R_1_E_0_S_1_B_0/w", np.zeros(3))
    reader = gradstore.open(path)
    assert reader.keys() == ["R_0_E_0_S_0_B_0/w", "R_1_E_0_S_0_B_0/w"]
    w1.write("R_1_E_0_S_1_B_0/w", np.ones(3))
    assert "R_1_E_0_S_1_B_0/w" not in reader
    reader.refresh()
    assert np.array_equal(reader["R_1_E_0_S_1_B_0/w"], np.ones(3))
    with pytest.raises(gradstore.LockedError, match="r1"):
        gradstore.open(path, "a", rank=1)
    w0.close()
    w1.close()
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == ["r0", "r1"]


def test_bit_flip_is_detected(tmp_path):
    path = tmp_path / "flip.gs"
    with gradstore.open(path, "a") as gs:
        gs.write("R_0_E_0_S_0_B_0/a", np.arange(100, dtype=np.float32))
        e = gs.write("R_0_E_0_S_0_B_0/b", np.arange(100, dtype=np.float32))
    seg = path / "main" / "data-000000.bin"
    with open(seg, "r+b") as f:
        f.seek(e.payload_offset + 17)
        byte = f.read(1)
        f.seek(e.payload_offset + 17)
        f.write(bytes([byte[0] ^ 0x10]))
    with gradstore.open(path) as gs:
        gs["R_0_E_0_S_0_B_0/b"]  # plain reads do not verify
        with pytest.raises(gradstore.ChecksumError) as info:
            gs.read("R_0_E_0_S_0_B_0/b", verify=True)
        err = info.value
        assert err.key == "R_0_E_0_S_0_B_0/b" and err.segment == "main/data-000000.bin"
        assert err.offset == e.offset and str(e.offset) in str(err)
        gs.read("R_0_E_0_S_0_B_0/a", verify=True)
        problems = gs.verify()
        assert [p.key for p in problems] == ["R_0_E_0_S_0_B_0/b"]


@pytest.mark.parametrize("damage", ["delete", "truncate-snapshot", "garbage-log"])
def test_index_damage_rebuilds_from_segments(tmp_path, damage):
    path = tmp_path / "idx.gs"
    want = {f"R_0_E_0_S_{i}_B_0/w": np.full(i + 1, i, np.int32) for i in range(30)}
    with gradstore.open(path, "a", segment_size="8KiB") as gs:
        for k, a in want.items():
            gs.write(k, a)
        gs.write("R_0_E_0_S_3_B_0/w", np.zeros(2, np.int32), overwrite=True)
        want["R_0_E_0_S_3_B_0/w"] = np.zeros(2, np.int32)
        gs._writer.checkpoint()
        gs.write("late", np.ones(3))
        want["late"] = np.ones(3)
    ns = path / "main"
    if damage == "delete":
        for p in list(ns.glob("index*")):
            p.unlink()
    elif damage == "truncate-snapshot":
        data = (ns / "index.snap").read_bytes()
        (ns / "index.snap").write_bytes(data[: len(data) // 2])
    else:
        for p in ns.glob("index-*.log"):
            p.write_bytes(b"garbage" * 10)
    # a reader rebuilds in memory without touching files
    before = sorted(os.listdir(ns))
    with gradstore.open(path) as gs:
        assert sorted(gs.keys()) == sorted(want)
    assert sorted(os.listdir(ns)) == before
    # repair rebuilds on disk
    assert gradstore.repair(path) == {"main": len(want)}
    with gradstore.open(path) as gs:
        for k, a in want.items():
            assert np.array_equal(gs.read(k, verify=True), a), k
    # and so does opening in "a" mode
    for p in list(ns.glob("index*")):
        p.unlink()
    with gradstore.open(path, "a") as gs:
        assert len(gs) == len(want)
        gs.write("after", np.zeros(1))
    with gradstore.open(path) as gs:
        assert len(gs) == len(want) + 1


def test_snapshot_and_log_replay_agree(tmp_path, monkeypatch):
    import gradstore.namespace as nsmod
    monkeypatch.setattr(nsmod, "CHECKPOINT_EVERY", 10)
    path = tmp_path / "cp.gs"
    with gradstore.open(path, "a") as gs:
        for i in range(55):
            gs.write(f"R_0_E_0_S_{i}_B_0/w", np.full((2, 3), i, np.float32))
            if i % 7 == 0:
                gs.write(f"R_0_E_0_S_{i}_B_0/w", np.full((2, 3), -i, np.float32), overwrite=True)
    logs = sorted(p.name for p in (path / "main").glob("index-*.log"))
    assert len(logs) == 1 and logs[0] != "index-000000.log"
    with gradstore.open(path) as gs:
        assert len(gs) == 55
        for i in range(55):
            want = -i if i % 7 == 0 else i
            a = gs[f"R_0_E_0_S_{i}_B_0/w"]
            assert a.shape == (2, 3) and (a == want).all()


def test_snapshot_lookup_at_scale_finds_every_key_and_no_other(tmp_path):
    """Enough rows for directory slots of several rows: every key, shape, variant
    and overwrite is found, and no key that is not there."""
    n = 3000
    path = tmp_path / "many.gs"
    with gradstore.open(path, "w") as gs:
        for i in range(n):
            gs.write(f"R_0_E_0_S_{i // 10}_B_{i % 10}/m.{i}", np.full((i % 4,) * (i % 3), i, np.int32))
        gs.encode("zlib:level=1", keys=[f"R_0_E_0_S_0_B_{b}/m.{b}" for b in range(10)])
    gradstore.repair(path)  # the whole index now comes from the snapshot
    with gradstore.open(path, "a") as gs:
        ns = gs._namespaces["main"]
        assert ns.index._n == n + 10 and len(ns.index._tail[1]) == 0
        gs.write("R_0_E_0_S_0_B_3/m.3", np.arange(5, dtype=np.int8), overwrite=True)
    with gradstore.open(path) as gs:
        assert len(gs) == n
        for i in range(n):
            a = gs[f"R_0_E_0_S_{i // 10}_B_{i % 10}/m.{i}"]
            if i == 3:
                assert a.tolist() == list(range(5))
                continue
            assert a.dtype == np.int32 and a.shape == (i % 4,) * (i % 3) and (a == i).all()
        for b in range(10):
            assert gs.variant(f"R_0_E_0_S_0_B_{b}/m.{b}", "zlib:level=1").shape == ((b % 4,) * (b % 3))
        for missing in ("R_0_E_0_S_0_B_0/m.1", "m.0", f"R_0_E_0_S_{n}_B_0/m.{n}", ""):
            with pytest.raises(KeyError):
                gs[missing]


def test_snapshot_lookup_with_colliding_hashes_and_the_largest_hash(tmp_path, monkeypatch):
    """Keys whose 64-bit hashes collide are told apart by their bytes, and a key
    that hashes to 2**64 - 1 (the sentinel's hash) is simply not there."""
    from gradstore import index

    real = index._xxh3
    fixed = {b"a/one": 2**63, b"a/two": 2**63, b"a/three": 2**63 + 1, b"last": 2**64 - 1}
    monkeypatch.setattr(index, "_xxh3", lambda b: fixed.get(bytes(b), real(b)))
    monkeypatch.setattr(index.fmt, "xxh3", lambda b: fixed.get(bytes(b), real(b)))
    path = tmp_path / "s.gs"
    with gradstore.open(path, "w") as gs:
        for i, key in enumerate(("a/one", "a/two", "a/three", "b")):
            gs.write(key, np.full(3, i, np.int16))
    gradstore.repair(path)  # the index now comes from the snapshot, sorted by those hashes
    with gradstore.open(path) as gs:
        assert gs._namespaces["main"].index._n == 4
        for i, key in enumerate(("a/one", "a/two", "a/three", "b")):
            assert gs[key].tolist() == [i] * 3 and gs.entry(key).key == key
        for missing in ("last", "a/four"):
            assert missing not in gs
            with pytest.raises(KeyError, match=missing):
                gs[missing]
    with gradstore.open(tmp_path / "empty.gs", "w") as gs:  # no base rows: the directory leads to the sentinel
        assert "last" not in gs
        with pytest.raises(KeyError):
            gs["last"]


GOLDEN = Path(__file__).parent / "golden"


def _assert_golden_content(gs) -> None:
    from golden_data import EXPECTED, expected_arrays
    assert sorted(gs.keys()) == sorted(EXPECTED)
    for key, arr in expected_arrays().items():
        got = gs.read(key, verify=True)
        assert got.dtype == arr.dtype and got.shape == arr.shape and bits(got) == bits(arr), key
    assert gs.verify() == []


def test_golden_store_reads_and_writes_the_same_bytes(tmp_path):
    """tests/golden/v2.gs was written by format version 2, the one written now.

    Reading it guards the reader; writing the same content again (clock
    pinned) and comparing every file byte for byte guards the writer.
    """
    from golden_data import write_golden
    golden = GOLDEN / "v2.gs"
    with gradstore.open(golden) as gs:
        _assert_golden_content(gs)
    fresh = tmp_path / "v2.gs"
    write_golden(fresh)
    names = sorted(p.relative_to(golden).as_posix() for p in golden.rglob("*") if p.is_file())
    assert names == ["GRADSTORE", "main/data-000000.bin", "main/index-000000.log", "main/index.snap"]
    for name in names:
        assert (fresh / name).read_bytes() == (golden / name).read_bytes(), name


@pytest.mark.parametrize("how", ["index", "repair"])
def test_version_1_store_is_read_and_appended_to(tmp_path, how):
    """A store written by format version 1 reads as it did; a writer adds
    version-2 records to it, and a rebuild keeps both (version-1 records are
    older than any version-2 one)."""
    path = tmp_path / "v1.gs"
    shutil.copytree(GOLDEN / "v1.gs", path)
    with gradstore.open(path) as gs:
        _assert_golden_content(gs)
    new = np.arange(7, dtype=np.float32)
    with gradstore.open(path, "a") as gs:
        gs.write("plain/key", new, overwrite=True)
        gs.write("R_9_E_0_S_0_B_0/w", new)
    assert json.loads((path / "GRADSTORE").read_text())["version"] == 2
    if how == "repair":
        gradstore.repair(path)
    with gradstore.open(path) as gs:
        assert bits(gs.read("plain/key", verify=True)) == bits(new)
        assert bits(gs["R_9_E_0_S_0_B_0/w"]) == bits(new)
        assert gs.verify() == []


def test_appending_across_many_sessions(tmp_path):
    """Each reopen in "a" mode resumes at the end of the segment, never over it."""
    path = tmp_path / "sessions.gs"
    want = {}
    for session in range(5):
        with gradstore.open(path, "a", segment_size="16KiB") as gs:
            for i in range(7):
                key = f"R_0_E_0_S_{session}_B_{i}/w"
                want[key] = np.full(100 * (i + 1), session * 10 + i, np.float32)
                gs.write(key, want[key])
            if session:
                key = f"R_0_E_0_S_{session - 1}_B_0/w"
                want[key] = np.arange(session, dtype=np.int16)
                gs.write(key, want[key], overwrite=True)
        with gradstore.open(path) as gs:
            assert gs.verify() == []
            for k, a in want.items():
                assert bits(gs.read(k, verify=True)) == bits(a) and gs[k].dtype == a.dtype, k


def test_rebuild_skips_a_damaged_record_header(tmp_path):
    path = tmp_path / "hdr.gs"
    with gradstore.open(path, "a") as gs:
        entries = [gs.write(f"k{i}", np.full(50, i, np.float64)) for i in range(5)]
    seg = path / "main" / "data-000000.bin"
    data = bytearray(seg.read_bytes())
    data[entries[2].offset + 45] ^= 0xFF  # inside k2's meta: its header checksum fails
    data[10] ^= 0xFF                       # and the segment header too
    seg.write_bytes(bytes(data))
    for p in (path / "main").glob("index*"):
        p.unlink()
    assert gradstore.repair(path) == {"main": 4}
    with gradstore.open(path) as gs:
        assert gs.keys() == ["k0", "k1", "k3", "k4"]
        assert all(gs.read(k, verify=True)[0] == int(k[1]) for k in gs.keys())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_large_payloads_after_the_parent_has(tmp_path):
    """The hashing thread does not survive fork: the child must start its own, not hang."""
    big = np.arange(1 << 19, dtype=np.float32)  # 2 MiB: hashed by the second thread
    with gradstore.open(tmp_path / "parent.gs", "w") as gs:
        gs.write("big", big)
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if the write round-trips
        code = 1
        try:
            with gradstore.open(tmp_path / "child.gs", "w") as gs:
                gs.write("big", big)
            with gradstore.open(tmp_path / "child.gs") as gs:
                code = 0 if np.array_equal(gs.read("big", verify=True), big) else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung writing a large payload")
