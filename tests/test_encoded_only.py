"""Keys stored as encoded variants only (Store.write_encoded): no tensor record, nothing lost."""
from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import gradstore
from gradstore import report
from gradstore.codecs.registry import get_codec
from gradstore.errors import KeyExistsError
from gradstore.maintenance import compact
from gradstore.store import checksum

EG = "eg:k=auto,scale=1e6"
FPX = "fpx"


def bucket(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"mlp.weight": rng.laplace(0, 1e-4, (64, 32)).astype(np.float32),
            "norm.weight": rng.laplace(0, 1e-3, 64).astype(ml_dtypes.bfloat16),
            "bad.bias": np.array([1.0, np.nan, -2.0], np.float32)}


@pytest.fixture
def stores(tmp_path):
    """The same two buckets stored as variants only, and as tensors with the same variants."""
    only, full = tmp_path / "only.gs", tmp_path / "full.gs"
    results = []
    with gradstore.open(only, "w") as a, gradstore.open(full, "w") as b:
        for s in range(2):
            results.append(a.write_encoded(f"R_0_E_0_S_{s}_B_0", bucket(s), [EG, FPX]))
            b.write_bucket(f"R_0_E_0_S_{s}_B_0", bucket(s))
        b.encode(EG)
        b.encode(FPX)
    return only, full, results


def test_variants_only_round_trip(stores):
    only, full, results = stores
    with gradstore.open(only) as gs, gradstore.open(full) as ref:
        assert gs.verify() == []
        assert gs.keys() == [] and len(gs) == 0
        assert gs.encoded_keys() == ref.keys()
        assert gs.encoded_keys(step=1, module="mlp.*") == ["R_0_E_0_S_1_B_0/mlp.weight"]
        for key in ref.keys():
            # the variant records are the ones encode() writes next to the tensor
            for spec in (EG, FPX) if "bad" not in key else (FPX,):
                got, want = gs.variant_entry(key, spec), ref.variant_entry(key, spec)
                assert got.extra["src"] == ref.entry(key).checksum == checksum(ref[key])
                assert got.extra["nbits"] == want.extra["nbits"] and got.payload_len == want.payload_len
                assert gs.variant(key, spec, verify=True).tobytes() == \
                    ref.variant(key, spec, verify=True).tobytes()
            assert gs.variant(key, FPX).tobytes() == ref[key].tobytes()   # lossless: the tensor
            with pytest.raises(KeyError, match="stored as encoded variants only"):
                gs[key]
            assert key not in gs
        assert gs.variant_specs("R_0_E_0_S_0_B_0/bad.bias") == [get_codec(FPX).spec]
    for s, r in enumerate(results):
        # eg cannot code NaN; fpx can, so that tensor is stored as its fpx variant only
        assert list(r.failed[get_codec(EG).spec]) == [f"R_0_E_0_S_{s}_B_0/bad.bias"]
        assert r.failed[get_codec(FPX).spec] == {} and r.raw == []
        assert len(r.written[get_codec(EG).spec]) == 2 and len(r.written[get_codec(FPX).spec]) == 3


def test_a_tensor_no_codec_can_code_is_stored_as_a_tensor(tmp_path):
    with gradstore.open(tmp_path / "s.gs", "w") as gs:
        r = gs.write_encoded("R_0_E_0_S_0_B_0", bucket(), EG)
        assert r.raw == ["R_0_E_0_S_0_B_0/bad.bias"]
        assert "NaN" in r.failed[get_codec(EG).spec]["R_0_E_0_S_0_B_0/bad.bias"]
    with gradstore.open(tmp_path / "s.gs") as gs:
        assert gs.keys() == ["R_0_E_0_S_0_B_0/bad.bias"]
        assert gs["R_0_E_0_S_0_B_0/bad.bias"].tobytes() == bucket()["bad.bias"].tobytes()
        assert gs.encoded_keys() == ["R_0_E_0_S_0_B_0/mlp.weight", "R_0_E_0_S_0_B_0/norm.weight"]


def test_overwrite_and_bad_arguments(tmp_path):
    with gradstore.open(tmp_path / "s.gs", "w") as gs:
        gs.write_encoded("R_0_E_0_S_0_B_0", {"w": np.ones(4, np.float32)}, FPX)
        with pytest.raises(KeyExistsError, match="fpx"):
            gs.write_encoded("R_0_E_0_S_0_B_0", {"w": np.zeros(4, np.float32)}, FPX)
        assert gs.variant("R_0_E_0_S_0_B_0/w", FPX).tolist() == [1, 1, 1, 1]
        gs.write_encoded("R_0_E_0_S_0_B_0", {"w": np.zeros(4, np.float32)}, FPX, overwrite=True)
        assert gs.variant("R_0_E_0_S_0_B_0/w", FPX).tolist() == [0, 0, 0, 0]
        with pytest.raises(ValueError, match="at least one codec"):
            gs.write_encoded("R_0_E_0_S_0_B_1", {"w": np.ones(4, np.float32)}, [])
        with pytest.raises(ValueError, match="not 'raw'"):
            gs.write_encoded("R_0_E_0_S_0_B_1", {"w": np.ones(4, np.float32)}, ["raw"])
        with pytest.raises(gradstore.errors.CodecError):
            gs.write_encoded("R_0_E_0_S_0_B_1", {"w": np.ones(4, np.float32)}, ["nosuchcodec"])
        assert gs.encoded_keys() == ["R_0_E_0_S_0_B_0/w"]


def test_overwrite_refuses_to_hide_a_stored_tensor(tmp_path):
    """Variants written over a key that holds a tensor would leave gs[key] the old tensor."""
    with gradstore.open(tmp_path / "s.gs", "w") as gs:
        gs.write_bucket("R_0_E_0_S_0_B_0", {"t": np.ones(4, np.float32)})
        with pytest.raises(KeyExistsError, match="holds a tensor"):
            gs.write_encoded("R_0_E_0_S_0_B_0", {"v": np.ones(4, np.float32),
                                                 "t": np.zeros(4, np.float32)}, FPX, overwrite=True)
        assert gs.encoded_keys() == [] and gs.variant_specs("R_0_E_0_S_0_B_0/t") == []
        assert gs["R_0_E_0_S_0_B_0/t"].tolist() == [1, 1, 1, 1]


def test_compaction_and_reopening_keep_them(stores):
    only, _, _ = stores
    with gradstore.open(only) as gs:
        before = {k: gs.variant(k, FPX).tobytes() for k in gs.encoded_keys()}
    with gradstore.open(only, "a") as gs:   # overwritten variants leave dead records to reclaim
        gs.write_encoded("R_0_E_0_S_0_B_0", bucket(0), [FPX], overwrite=True)
    compact(only)
    with gradstore.open(only) as gs:
        assert gs.verify() == []
        assert {k: gs.variant(k, FPX, verify=True).tobytes() for k in gs.encoded_keys()} == before


def test_report_counts_them_as_the_full_store(stores):
    only, full, _ = stores
    a = report.run(only, [EG, FPX, "zstd"], group_by="step", results=False, progress=False)
    b = report.run(full, [EG, FPX, "zstd"], group_by="step", results=False, progress=False)
    assert a.keys == b.keys == 6
    zstd = get_codec("zstd").spec
    for ra, rb in zip(a.rows, b.rows):
        assert (ra["group"], ra["codec"]) == (rb["group"], rb["codec"])
        if ra["codec"] == zstd:   # no tensor to encode: every key says so
            assert ra["keys"] == 0 and ra["not_encodable"] == 3
            continue
        assert ra == rb   # sizes, ratios on disk (the raw records it would take), errors
    reasons = {r.failed for r in a.results() if r.codec == zstd}
    assert reasons == {f"stored as encoded variants only: no tensor to encode with {zstd}"}


def test_info_counts_them(stores):
    only, _, _ = stores
    proc = subprocess.run([sys.executable, "-m", "gradstore", "info", str(only)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(None, 1) if not line.startswith(("tensor", "disk", "encoded", "segment"))
                 else (" ".join(line.split()[:2]), line.split(None, 2)[2]) for line in proc.stdout.splitlines())
    assert lines["keys"] == "0" and lines["buckets"] == "2" and lines["steps"] == "0..1"
    assert lines["encoded only"].startswith("6 keys")


def test_cli_lists_and_gets_them(stores, tmp_path):
    only, full, _ = stores
    cli = [sys.executable, "-m", "gradstore"]
    ls = subprocess.run([*cli, "ls", str(only)], capture_output=True, text=True, timeout=120)
    with gradstore.open(full) as ref:
        assert ls.returncode == 0 and ls.stdout.split() == ref.keys()
        want = np.array(ref["R_0_E_0_S_1_B_0/mlp.weight"])
    long = subprocess.run([*cli, "ls", "-l", str(only), "--module", "bad.*"], capture_output=True,
                          text=True, timeout=120)
    assert long.stdout.splitlines() == [
        f"R_0_E_0_S_{s}_B_0/bad.bias\tfloat32\t3\tvariants only: {get_codec(FPX).spec}" for s in (0, 1)]
    out = tmp_path / "w.npy"
    got = subprocess.run([*cli, "get", str(only), "R_0_E_0_S_1_B_0/mlp.weight", "-o", str(out),
                          "--codec", FPX], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert np.load(out).tobytes() == want.tobytes()
    bad = subprocess.run([*cli, "get", str(only), "R_0_E_0_S_1_B_0/mlp.weight", "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert "encoded variants only" in bad.stderr and "--codec" in bad.stderr


WRITER = """
import sys
import numpy as np
import gradstore
path, done = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
with gradstore.open(path, "a") as gs, open(done, "a") as log:
    for s in range(100000):
        tensors = {f"m{i}.weight": rng.laplace(0, 1e-4, 20000).astype(np.float32) for i in range(8)}
        gs.write_encoded(f"R_0_E_0_S_{s}_B_0", tensors, ["eg:k=0,scale=1e6", "zstd:level=1"])
        log.write(f"{s}\\n")
        log.flush()
"""


@pytest.mark.parametrize("after", [0.8, 1.5, 2.2])
def test_a_killed_writer_leaves_whole_buckets(tmp_path, after):
    """SIGKILL during write_encoded: every bucket it returned from is there, whole, and the
    one in flight is there whole or not at all (a bucket's variants are one run)."""
    import signal
    import time
    path, done = tmp_path / "s.gs", tmp_path / "done"
    done.write_text("")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(done)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not done.read_text() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)   # the first bucket is in: start-up and kernel loading are behind
    time.sleep(after)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    committed = [int(x) for x in done.read_text().split()]
    assert committed, "the writer committed nothing before it was killed"
    with gradstore.open(path) as gs:
        assert gs.verify() == []
        steps = {}
        for key in gs.encoded_keys():
            steps.setdefault(gradstore.Key.parse(key).step, []).append(key)
        assert set(committed) <= set(steps) <= set(committed) | {max(committed) + 1}
        for s, keys in steps.items():
            assert len(keys) == 8, f"bucket {s}: {len(keys)} of its 8 tensors"
            for key in keys:
                assert len(gs.variant_specs(key)) == 2
                assert gs.variant(key, "zstd:level=1", verify=True).shape == (20000,)


def test_the_list_follows_writes_and_other_writers(tmp_path):
    path = tmp_path / "s.gs"
    one = {"w": np.ones(8, np.float32)}
    with gradstore.open(path, "w") as gs, gradstore.open(path) as reader:
        gs.write_encoded("R_0_E_0_S_0_B_0", one, FPX)
        assert gs.encoded_keys() == ["R_0_E_0_S_0_B_0/w"]
        gs.write("R_0_E_0_S_0_B_0/w", one["w"])          # now a tensor with a variant
        assert gs.encoded_keys() == [] and gs.keys() == ["R_0_E_0_S_0_B_0/w"]
        gs.write_encoded("R_0_E_0_S_1_B_0", one, FPX)
        assert gs.encoded_keys() == ["R_0_E_0_S_1_B_0/w"]
        assert gs.source_entry("R_0_E_0_S_1_B_0/w").checksum == checksum(one["w"])
        assert reader.encoded_keys() == []
        reader.refresh()
        assert reader.encoded_keys() == ["R_0_E_0_S_1_B_0/w"]
        with pytest.raises(KeyError, match="no such key"):
            gs.source_entry("R_0_E_0_S_9_B_0/w")


def test_a_snapshot_of_variants_only(tmp_path):
    """More records than a close snapshots at: the reopened index holds variants only, and
    lists them by their entry ids (key and codec), not by their keys."""
    from gradstore import namespace
    path = tmp_path / "s.gs"
    rng = np.random.default_rng(0)
    n = namespace.CHECKPOINT_ON_CLOSE // 10 + 1
    with gradstore.open(path, "w") as gs:
        for s in range(n):
            gs.write_encoded(f"R_0_E_0_S_{s}_B_0",
                             {f"m{i}": rng.standard_normal(16).astype(np.float32) for i in range(10)}, FPX)
    assert (path / "main" / "index.snap").exists()
    with gradstore.open(path) as gs:
        keys = gs.encoded_keys()
        assert len(keys) == 10 * n
        assert gs.variant_specs(keys[-1]) == [get_codec(FPX).spec]
        assert gs.source_entry(keys[-1]).shape == (16,)
    rep = report.run(path, [FPX], results=False, progress=False)
    assert rep.keys == 10 * n and rep.rows[0]["keys"] == 1


def test_variants_encoded_from_a_namespace_without_tensors_are_listed(tmp_path):
    """Tensors in rank 0's namespace, their variants written by the main namespace's writer:
    main's snapshot then holds variants only (the same index path as above)."""
    from gradstore import namespace
    path = tmp_path / "s.gs"
    rng = np.random.default_rng(0)
    with gradstore.open(path, "a", rank=0) as gs:
        for s in range(namespace.CHECKPOINT_ON_CLOSE // 10 + 1):
            gs.write_bucket(f"R_0_E_0_S_{s}_B_0",
                            {f"m{i}": rng.standard_normal(16).astype(np.float32) for i in range(10)})
    with gradstore.open(path, "a") as gs:
        assert not gs.encode(FPX, progress=False).failed
    assert (path / "main" / "index.snap").exists()
    with gradstore.open(path) as gs:
        assert all(gs.variant_specs(k) == [get_codec(FPX).spec] for k in gs.keys())
        assert gs.encoded_keys() == []
