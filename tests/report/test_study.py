"""The study (gradstore report --study): its sizes are the eg codec's own, its entropy
numpy's, whatever the grouping and however the work is split."""
from __future__ import annotations

from collections import defaultdict

import ml_dtypes
import numpy as np
import pytest

import gradstore
from gradstore.codecs.eg import EGCodec
from gradstore.report import study
from gradstore.keys import module_type
from gradstore.report.study.model import Counts

from report_helpers import EG, gradstore_cli, write_store

CHUNK = 1000


def wide(rng, n: int, dtype) -> np.ndarray:
    """Gradient-like values: magnitudes spread log-uniformly over 1e-8 .. 1e-2, random signs,
    some exact zeros and a few large outliers."""
    x = 10.0 ** rng.uniform(-8, -2, n) * rng.choice([-1.0, 1.0], n)
    x[rng.random(n) < 0.05] = 0.0
    x[rng.random(n) < 0.002] = rng.uniform(-0.5, 0.5)
    return x.astype(dtype)


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory):
    """Two steps of two ranks: many tiny tensors (biases, norms, an empty one), two larger
    than CHUNK; fp32 in bucket 0, bf16 in bucket 1; and a tensor eg cannot code."""
    rng = np.random.default_rng(14)
    path = tmp_path_factory.mktemp("study") / "wide.gs"
    tensors = {}
    with gradstore.open(path, "a") as gs:
        for step in range(2):
            for rank in range(2):
                b0 = {f"model.layers.{i}.bias": wide(rng, int(rng.integers(1, 40)), np.float32)
                      for i in range(12)}
                b0["model.layers.0.mlp.weight"] = wide(rng, 2500, np.float32).reshape(50, 50)
                b0["model.layers.1.mlp.weight"] = wide(rng, 3 * CHUNK, np.float32)
                b0["model.empty"] = np.zeros(0, np.float32)
                b1 = {"model.norm.weight": wide(rng, 300, ml_dtypes.bfloat16),
                      "model.embed.weight": wide(rng, 20000, ml_dtypes.bfloat16)}   # by bit pattern
                for b, bucket in enumerate((b0, b1)):
                    name = f"R_{rank}_E_0_S_{step}_B_{b}"
                    gs.write_bucket(name, bucket)
                    tensors.update({f"{name}/{m}": a for m, a in bucket.items()})
        gs.write("broken", np.array([1.0, np.inf], np.float32))
    return str(path), tensors


def quantized(a: np.ndarray, scale: float) -> np.ndarray:
    return np.rint(np.asarray(a, dtype=np.float64).reshape(-1) * scale).astype(np.int64)


def numpy_entropy(q: np.ndarray) -> float:
    """n * H of q, straight from the definition."""
    if q.size == 0:
        return 0.0
    _, c = np.unique(q, return_counts=True)
    p = c / q.size
    return float(-(c * np.log2(p)).sum())


def expected_costs(arrays: list[np.ndarray], scale: float, sign: str) -> tuple[list[int], float, int]:
    """([body bits eg writes for each variant, one array each], sum n*H, elements)."""
    bits = [0] * len(study.VARIANTS)
    for a in arrays:
        for i, (_, k, remap) in enumerate(study.VARIANTS):
            codec = EGCodec(k=k, scale=scale, sign=sign, remap="rank" if remap else "none")
            bits[i] += codec.encode(a).nbits
    return bits, sum(numpy_entropy(quantized(a, scale)) for a in arrays), sum(a.size for a in arrays)


def check(cost: study.Cost, arrays: list[np.ndarray], scale: float, sign: str) -> None:
    bits, entropy, n = expected_costs(arrays, scale, sign)
    assert cost.models == len(arrays) and cost.elements == n
    assert cost.bits == bits
    assert cost.entropy.value == pytest.approx(entropy, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("scale,sign", [(1e6, "bit"), (3e4, "zigzag")])
def test_bits_are_what_eg_writes_and_entropy_is_numpys(wide_store, scale, sign):
    path, tensors = wide_store
    s = study.run(path, spec=f"eg:k=0,scale={scale},sign={sign}", chunk=CHUNK, progress=False)
    assert s.skipped and s.skipped[0][0] == "broken" and "inf" in s.skipped[0][1]
    # per tensor: each tensor encoded by the codec, by module type and in all
    by_type, by_bucket = defaultdict(list), defaultdict(list)
    for key, a in tensors.items():
        bucket, module = key.split("/", 1)
        by_type[module_type(module)].append(a.reshape(-1))
        by_bucket[bucket].append(a.reshape(-1))
    assert sorted(s.by_module) == sorted(by_type)
    for mtype, arrays in by_type.items():
        check(s.by_module[mtype], arrays, scale, sign)
    check(s.groupings["tensor"], list(tensors.values()), scale, sign)
    # per chunk: every CHUNK elements of a tensor encoded on their own
    pieces = [a.reshape(-1)[i:i + CHUNK] for a in tensors.values() for i in range(0, max(a.size, 1), CHUNK)]
    check(s.groupings["chunk"], pieces, scale, sign)
    # per bucket and per module type: the group's tensors encoded as one array
    check(s.groupings["bucket"], [np.concatenate(v) for v in by_bucket.values()], scale, sign)
    check(s.groupings["module type"], [np.concatenate(v) for v in by_type.values()], scale, sign)


def test_rank_tables_counted_once_per_model(wide_store):
    """A tensor's model pays its rank table as eg writes it; a coarser model pays one table."""
    path, tensors = wide_store
    s = study.run(path, chunk=CHUNK, progress=False)
    auto_rank = [name for name, _, _ in study.VARIANTS].index("k=auto,rank")
    codec = EGCodec(k="auto", remap="rank")
    tables = sum(codec.encode(a).info["table_bits"] for a in tensors.values())
    assert tables > 0 and s.groupings["tensor"].table_bits[auto_rank] == tables
    assert s.groupings["module type"].table_bits[auto_rank] < tables
    for g, cost in s.groupings.items():
        assert 0 < cost.table_bits[auto_rank] < cost.bits[auto_rank], g


def test_parallel_equals_serial(tmp_path):
    path = write_store(tmp_path / "run.gs", ranks=2, steps=2, modules=4)    # several tasks' worth
    serial = study.run(path, progress=False)
    parallel = study.run(path, jobs=2, progress=False)
    assert serial.to_rows() == parallel.to_rows()
    assert serial.render() == parallel.render()
    assert sorted(serial.skipped) == sorted(parallel.skipped) == [(k, r) for k, r in serial.skipped if k == "bad"]
    assert serial.groupings["bucket"].models == 4 and serial.groupings["module type"].models == 2


def test_histograms_add_up_like_numpy():
    rng = np.random.default_rng(1)
    total, values = Counts(), []
    for _ in range(40):
        q = rng.integers(-5000, 5000, int(rng.integers(1, 20000))) ** 3 // 1000
        keys, counts = np.unique(q, return_counts=True)
        total.add(keys, counts)
        values.append(q)
    keys, counts = total.fold()
    want_keys, want_counts = np.unique(np.concatenate(values), return_counts=True)
    assert np.array_equal(keys, want_keys) and np.array_equal(counts, want_counts)


def test_module_type_strips_layer_numbers_only():
    assert module_type("model.layers.12.mlp.down_proj.weight") == "model.layers.*.mlp.down_proj.weight"
    assert module_type("h.0.attn.c_attn.bias") == "h.*.attn.c_attn.bias"
    assert module_type("conv1.weight") == "conv1.weight"
    assert module_type("0.weight") == "*.weight"


def test_render_fits_and_answers(wide_store):
    s = study.run(wide_store[0], chunk=CHUNK, progress=False)
    text = s.render(width=100)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert s.rank_answer() .split(":")[0] in ("Yes", "No")
    assert s.grouping_answer().split(":")[0] in ("Yes", "No")
    rows = s.to_rows()
    assert [r["group"] for r in rows[-4:]] == [s.grouping_label(g) for g in study.GROUPINGS]
    assert rows[-5]["group"] == "all" and rows[-5]["elements"] == s.overall.elements


def test_bad_spec():
    with pytest.raises(ValueError, match="needs an eg codec"):
        study.run("unused", spec="zstd:level=1")


def test_cli_prints_both_answers(store):
    r = gradstore_cli("report", store, "--codec", EG, "--study", "-q")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "1. Does ordering symbols by probability (remap=rank) pay?" in out
    assert "2. Does grouping tensors pay?" in out
    answers = [line for line in out.splitlines() if line.startswith(("Yes: ", "No: "))]
    assert len(answers) == 2 and "remap=rank" in answers[0] and "per tensor" in out
    study_part = out[out.index("Study of"):]
    assert max(len(line) for line in study_part.splitlines()) <= 100
    assert "quantized as eg:scale=1e+06,sign=bit" in out


def test_dask_equals_serial(tmp_path):
    distributed = pytest.importorskip("distributed")
    path = write_store(tmp_path / "run.gs", ranks=2, steps=2, modules=4)
    serial = study.run(path, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        on_dask = study.run(path, dask=cluster.scheduler_address, progress=False)
    assert on_dask.to_rows() == serial.to_rows()
    assert sorted(on_dask.skipped) == sorted(serial.skipped)
