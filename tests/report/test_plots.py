"""--plot DIR: three real PNGs from a report's results, through the API and the CLI."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")

from gradstore import report  # noqa: E402
from gradstore.report import plots  # noqa: E402

from report_helpers import SPECS, gradstore_cli  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _check_pngs(paths) -> None:
    import matplotlib.image as mpimg
    assert [p.rsplit("/", 1)[-1] for p in map(str, paths)] == list(plots.FILES)
    for p in paths:
        data = open(p, "rb").read()
        assert data[:8] == PNG and len(data) > 10_000, p
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 400, (p, img.shape)
        assert img[..., :3].std() > 0.05, p                  # something is drawn, not a blank page


def test_plots_of_a_report_are_valid_pngs(store, tmp_path):
    rep = report.run(store, SPECS, results=False, progress=False)
    try:
        paths = plots.write(rep.results(), tmp_path / "plots")
    finally:
        rep.close()
    _check_pngs(paths)


def test_sums_follow_the_results(store):
    rep = report.run(store, SPECS, results=False, progress=False)
    try:
        sums = plots.Sums()
        results = list(rep.results())
        for r in results:
            sums.add(r)
    finally:
        rep.close()
    assert list(sums.codecs) == rep.specs
    eg = [r for r in results if r.codec == rep.specs[0] and r.failed is None and r.key.startswith("R_1_E_0_S_2_B_0/")]
    assert sums.step[(rep.specs[0], 1, 2)] == [sum(r.nbits for r in eg), sum(8 * r.raw_bytes for r in eg)]
    assert ("bad" not in {k for _, k in sums.bucket})                      # plain keys are left out
    assert (rep.specs[0], "layers.*.mlp.weight") in sums.module


def test_cli_plot_writes_the_files(store, tmp_path):
    out = tmp_path / "figs"
    proc = gradstore_cli("report", store, "--codec", SPECS[0], "-q", "--results", tmp_path / "r.results",
                         "--plot", out)
    assert proc.returncode == 0, proc.stderr
    paths = [out / name for name in plots.FILES]
    assert all(str(p) in proc.stdout for p in paths)
    _check_pngs(paths)


def test_cli_plot_without_matplotlib_is_one_error_line(store, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from gradstore.cli import main; "
            f"sys.exit(main(['report', {str(store)!r}, '--codec', 'zstd:level=1', '-q', '--plot', "
            f"{str(tmp_path / 'p')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["gradstore: error: --plot needs matplotlib (pip install matplotlib)"]
    assert not (tmp_path / "p").exists()
