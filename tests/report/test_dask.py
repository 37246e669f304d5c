"""Reports on a Dask cluster (distributed.LocalCluster) equal serial ones, from Python and the CLI."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

import gradstore
from gradstore import report

from report_helpers import EG, SPECS, gradstore_cli

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  protocol="tcp", host="127.0.0.1", dashboard_address=None) as c:
        yield c


def test_dask_rows_and_results_equal_serial(store, cluster, tmp_path):
    serial = report.run(store, SPECS, group_by="rank,step", results=False)
    on_dask = report.run(store, SPECS, group_by="rank,step", dask=cluster.scheduler_address,
                         results=tmp_path / "d.results")
    assert on_dask.rows == serial.rows
    def by_key(rep):
        return sorted((r.key, r.codec, json.dumps(r.to_dict())) for r in rep.results())
    assert by_key(on_dask) == by_key(serial)
    again = report.run(store, SPECS, group_by="rank,step", dask=cluster.scheduler_address,
                       results=tmp_path / "d.results")
    assert again.measured == 0 and again.rows == serial.rows


def test_dask_cli_with_address_and_scheduler_file(store, cluster, tmp_path):
    serial = tmp_path / "serial.csv"
    assert gradstore_cli("report", store, "--codec", EG, "--group-by", "step", "--csv", serial,
                         "--results", tmp_path / "s.results").returncode == 0
    by_address = tmp_path / "a.csv"
    proc = gradstore_cli("report", store, "--codec", EG, "--group-by", "step", "--csv", by_address,
                         "--dask", cluster.scheduler_address, "--results", tmp_path / "a.results")
    assert proc.returncode == 0, proc.stderr
    assert by_address.read_text() == serial.read_text()
    sched = tmp_path / "scheduler.json"
    sched.write_text(json.dumps({"address": cluster.scheduler_address}))
    by_file = tmp_path / "f.csv"
    proc = gradstore_cli("report", store, "--codec", EG, "--group-by", "step", "--csv", by_file,
                         "--scheduler-file", sched, "--results", tmp_path / "f.results")
    assert proc.returncode == 0, proc.stderr
    assert list(csv.DictReader(by_file.open())) == list(csv.DictReader(serial.open()))


def test_dask_encode_equals_serial(store, cluster, tmp_path):
    from report_helpers import write_store
    other = write_store(tmp_path / "other.gs")
    with gradstore.open(store, "a") as a, gradstore.open(other, "a") as b:
        ra = a.encode(EG)
        rb = b.encode(EG, dask=cluster.scheduler_address)
        assert sorted(ra.written) == sorted(rb.written)
        for key in ra.written:
            assert a.variant(key, EG).tobytes() == b.variant(key, EG).tobytes()


def test_without_distributed_dask_is_one_error_line(store):
    code = ("import sys; sys.modules['distributed'] = None; from gradstore.cli import main; "
            "sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", code, "report", store, "--codec", EG,
                           "--dask", "tcp://127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gradstore: error: --dask needs dask.distributed: pip install 'gradstore[dask]'"]


def test_unreachable_scheduler_is_one_error_line(store, tmp_path):
    missing = tmp_path / "none.json"
    proc = gradstore_cli("report", store, "--codec", EG, "--scheduler-file", missing, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
