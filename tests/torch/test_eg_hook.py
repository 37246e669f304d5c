"""eg_compress_hook in real DDP training (2 ranks, gloo over 127.0.0.1, CPU), and its statistics.

The test redoes the hook's arithmetic independently from what each rank
recorded: the eg codec run on each rank's bucket (plus its residual), the
decoded values of both ranks averaged in float64, the residual as the
bucket minus its own decoded values; every comparison is bit-exact.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradstore  # noqa: E402
from gradstore.codecs.registry import get_codec  # noqa: E402
from gradstore.torch import EGHookState  # noqa: E402
from gradstore.torch.ddp import spawn  # noqa: E402
from gradstore.torch import eg_compress_hook  # noqa: E402
from gradstore import hookstats  # noqa: E402
from gradstore.hookstats import BucketRecord, as_row, read_stats, totals, write_stats  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import eg_hook_workers as ew  # noqa: E402

WORLD = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eg_hook")
    spawn(ew.scenarios, WORLD, str(root), threads=1, timeout=120)
    return root, [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def compensated(call: dict) -> torch.Tensor:
    """What the hook codes: the bucket (as float32 if it is bf16), plus the residual kept for
    its index if the size matches."""
    x, res = call["before"].float(), call["residual_before"]
    return x + res if res is not None and res.numel() == x.numel() else x


def calls_by_rank(records: list, scenario: str) -> list[tuple[dict, ...]]:
    calls = [rec[scenario]["calls"] for rec in records]
    assert len({len(c) for c in calls}) == 1, "every rank made the same number of hook calls"
    for pair in zip(*calls):
        assert len({(c["step"], c["index"]) for c in pair}) == 1, "ranks call buckets in one order"
    return list(zip(*calls))


@pytest.mark.parametrize("scenario", ["ef", "no_ef", "bf16"])
def test_average_is_the_average_of_the_decoded_buckets(run, scenario):
    _, records = run
    codec = get_codec(ew.EGHookState(**ew.SPEC).spec)
    lossy = 0
    for pair in calls_by_rank(records, scenario):
        xs = [compensated(c).numpy() for c in pair]
        payloads = [codec.encode(x).payload for x in xs]
        decoded = [codec.decode(p, np.float32, x.shape) for p, x in zip(payloads, xs)]
        expected = ((decoded[0].astype(np.float64) + decoded[1]) / WORLD).astype(np.float32)
        for rank, c in enumerate(pair):
            assert c["after"].dtype == c["before"].dtype
            assert torch.equal(c["after"], torch.from_numpy(expected).to(c["after"].dtype)), rank
            rec = c["record"]
            assert rec["fallback"] == ""
            assert rec["payload_bytes"] == len(payloads[rank])
            assert rec["gathered_bytes"] == sum(map(len, payloads))
            assert rec["bytes_after"] == 8 + max(map(len, payloads))
            assert rec["bytes_before"] == c["before"].element_size() * xs[rank].size
        exact = (xs[0].astype(np.float64) + xs[1]) / WORLD
        lossy += int(np.count_nonzero(expected != exact.astype(np.float32)))
    assert lossy > 0, "quantization must change some averaged values, else the check proves nothing"


@pytest.mark.parametrize("scenario", ["ef", "no_ef", "bf16"])
def test_parameters_stay_identical_across_ranks(run, scenario):
    _, records = run
    a, b = (rec[scenario]["params"] for rec in records)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    start = ew.make_model().to(a[next(iter(a))].dtype).state_dict()
    assert any(not torch.equal(a[n], start[n]) for n in a), "training moved the parameters"


def test_residual_is_what_quantization_dropped(run):
    _, records = run
    codec = get_codec(ew.EGHookState(**ew.SPEC).spec)
    carried = resized = 0
    for rank, rec in enumerate(records):
        for c in rec["ef"]["calls"] + rec["bf16"]["calls"]:
            x = compensated(c)
            dropped = x - torch.from_numpy(codec.decode(codec.encode(x.numpy()).payload,
                                                        np.float32, x.shape))
            assert torch.equal(c["residual_after"], dropped), (rank, c["step"], c["index"])
            res = c["residual_before"]
            if res is not None and res.numel() == x.numel():
                carried += bool(res.abs().max() > 0)
            elif res is not None:
                resized += 1   # DDP rebuilt the bucket under this index: the residual is dropped
    assert carried > 0, "residuals must be carried into later steps"
    assert resized > 0, "the rebuild after step 0 must change some bucket's size under its index"


def test_without_error_feedback_nothing_is_carried(run):
    _, records = run
    for rec in records:
        for c in rec["no_ef"]["calls"]:
            assert c["residual_before"] is None and c["residual_after"] is None


def test_non_finite_and_out_of_range_buckets_fall_back_to_the_exact_all_reduce(run):
    _, records = run
    reasons = {1: "nonfinite", 2: "range"}   # see eg_hook_workers.scenarios
    seen = set()
    for pair in calls_by_rank(records, "fallback"):
        step = pair[0]["step"]
        why = {c["record"]["fallback"] for c in pair}
        assert len(why) == 1, "every rank takes the same way"
        why = why.pop()
        if not why:
            continue
        seen.add((step, why))
        xs = [compensated(c) for c in pair]
        exact = xs[0] / WORLD + xs[1] / WORLD          # torch's allreduce_hook: divide, then sum
        for c in pair:
            assert torch.equal(c["after"].nan_to_num(), exact.nan_to_num())
            assert torch.equal(torch.isinf(c["after"]), torch.isinf(exact))
            assert c["residual_after"] is None, "the residual went out exactly"
            r = c["record"]
            assert r["payload_bytes"] == 0 and r["bytes_after"] == 8 + r["bytes_before"]
    assert seen == {(1, "nonfinite"), (2, "range")}
    for rank, rec in enumerate(records):
        t = rec["fallback"]["totals"]
        assert (t["fallbacks"], t["fallback_nonfinite"], t["fallback_range"]) == (2, 1, 1), rank
        last = [c for c in rec["fallback"]["calls"] if c["step"] == ew.STEPS - 1]
        assert last and all(c["record"]["fallback"] == "" for c in last), "EG coding resumes"
        assert all(torch.isfinite(p).all() for p in rec["fallback"]["params"].values())


def test_totals_are_the_sums_of_the_records(run):
    _, records = run
    for rec in records:
        for scenario in ("ef", "no_ef", "bf16", "fallback", "capture"):
            rows = [c["record"] for c in rec[scenario]["calls"]]
            t = rec[scenario]["totals"]
            assert t["buckets"] == len(rows)
            assert t["steps"] == max(r["step"] for r in rows) + 1
            for name in ("bytes_before", "bytes_after", "payload_bytes", "numel"):
                assert t[name] == sum(r[name] for r in rows), (scenario, name)
            assert t["compress_rate"] == t["bytes_before"] / t["bytes_after"]
            assert t["bits_per_element"] == 8 * t["bytes_after"] / t["numel"]


def test_state_writes_its_records(run):
    root, records = run
    for rank, rec in enumerate(records):
        path = root / f"ef_rank{rank}.json"
        rows = [c["record"] for c in rec["ef"]["calls"]]
        assert [as_row(r) for r in read_stats(path)] == rows
        doc = json.loads(path.read_text())
        assert doc["rank"] == rank and doc["steps"] == ew.STEPS
        assert doc["spec"] == ew.EGHookState(**ew.SPEC).spec
        assert doc["totals"] == {k: v for k, v in rec["ef"]["totals"].items() if k != "steps"}


def test_capture_stores_the_averaged_gradients(run):
    root, records = run
    with gradstore.open(root / "capture.gs") as gs:
        assert gs.verify() == []
        for rank, rec in enumerate(records):
            got = {}
            for key in gs.keys(rank=rank):
                k = gradstore.Key.parse(key)
                got[(k.step, k.module)] = np.array(gs[key])
            want = {(s, n): g.numpy() for s, grads in enumerate(rec["capture"]["grads"])
                    for n, g in grads.items()}
            assert got.keys() == want.keys()
            for key, g in want.items():
                np.testing.assert_array_equal(got[key], g, err_msg=str(key))
    assert all(c["record"]["fallback"] == "" for rec in records for c in rec["capture"]["calls"])


def test_capture_writes_the_hook_records_into_the_store(run):
    root, records = run
    stats, problems = hookstats.read_store(root / "capture.gs")
    assert problems == [] and sorted(stats) == [("eg", r) for r in range(WORLD)]
    for rank, rec in enumerate(records):
        assert [as_row(r) for r in stats[("eg", rank)]] == [c["record"] for c in rec["capture"]["calls"]]


def test_report_prints_and_plots_the_hook_records(run, tmp_path):
    pytest.importorskip("matplotlib")
    root, records = run
    store = tmp_path / "capture.gs"
    shutil.copytree(root / "capture.gs", store)
    plots = tmp_path / "plots"
    proc = subprocess.run([sys.executable, "-m", "gradstore", "report", str(store), "--codec",
                           "eg:k=auto,scale=1e6", "--plot", str(plots)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    head = lines.index(next(line for line in lines if line.startswith("communication hook statistics")))
    for rank, rec in enumerate(records):
        t = rec["capture"]["totals"]
        row = lines[head + 2 + rank].split()
        assert row[:4] == ["eg", str(rank), str(t["steps"]), str(t["buckets"])]
        assert row[4:6] == [f"{t['bytes_before']:,d}", f"{t['bytes_after']:,d}"]
    assert (plots / "hook_bytes_per_step.png").stat().st_size > 10_000
    assert str(plots / "hook_bytes_per_step.png") in lines
    # a damaged records file: one warning line, the report goes on with the other rank
    (store / "hooks" / "eg-r1.csv").write_text("step,bucket\n1,x\n")
    proc = subprocess.run([sys.executable, "-m", "gradstore", "report", str(store), "--codec",
                           "eg:k=auto,scale=1e6"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "hooks/eg-r1.csv" in line]
    assert len(warning) == 1 and warning[0].startswith("gradstore: warning: ")
    assert "Traceback" not in proc.stderr
    assert [line.split()[:2] for line in proc.stdout.splitlines() if line.startswith("  eg ")] == [["eg", "0"]]


def test_state_parameters():
    assert EGHookState(error_bound=5e-7).scale == pytest.approx(1e6)
    assert EGHookState(scale=1e5, k="auto", remap="rank").spec == \
        "eg:k=auto,remap=rank,scale=100000.0,sign=bit,zeros=plain"
    with pytest.raises(ValueError, match="not both"):
        EGHookState(scale=1e6, error_bound=1e-6)
    with pytest.raises(ValueError, match="error_bound"):
        EGHookState(error_bound=0)
    with pytest.raises(ValueError, match="error_bound"):
        EGHookState(error_bound=True)
    with pytest.raises(gradstore.errors.CodecError, match="'k'"):
        EGHookState(k=99)
    with pytest.raises(TypeError, match="EGHookState"):
        eg_compress_hook(None, object())


def test_stats_files_round_trip(tmp_path):
    rows = [BucketRecord(0, 0, 100, 400, 90, 170, 98, 0.1, 0.2, 0.3),
            BucketRecord(0, 1, 50, 200, 0, 0, 208, 0.0, 0.1, 0.0, "nonfinite")]
    for name in ("s.csv", "s.json"):
        write_stats(rows, tmp_path / name, rank=1)
        assert read_stats(tmp_path / name) == rows
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["rank"] == 1 and doc["totals"] == totals(rows)
    assert doc["totals"]["fallback_nonfinite"] == 1 and doc["totals"]["bytes_after"] == 306
    assert rows[1].bits_per_element == 8 * 208 / 50
