"""The terminal summary: 100 columns whatever the keys and codecs, the factor, the totals."""
from __future__ import annotations

from gradstore import report
from gradstore.report import summary
from gradstore.report.groups import Groups
from gradstore.report.result import KeyResult

from report_helpers import EG, SPECS, gradstore_cli

LONG = "R_12_E_3_S_104567_B_11/model.layers.31.self_attn.rotary_emb.very_long_module_name.weight"


def _groups(group_by=()) -> Groups:
    g = Groups(group_by, ["eg:k=0,remap=none,scale=1000000.0,sign=bit,zeros=plain", "zstd:level=3"])
    for key, bits in ((LONG, 320), ("R_0_E_0_S_0_B_0/m.bias", 40)):
        g.declare(key)
        raw = KeyResult(key, "raw", 1, "float32", 25, 100, 164, 800, 100, 164)
        g.add(raw)
        g.add(KeyResult(key, g.specs[1], 1, "float32", 25, 100, 164, bits, bits // 8, 64 + bits // 8,
                        entropy_bits=bits * 0.75, lossless=False, max_abs=1e-6, sq_err=1e-12, sq_ref=1e-8))
        g.add(KeyResult(key, g.specs[2], 1, "float32", 25, 100, 164, 0, 0, 0, failed="too big"))
    return g


def test_every_line_fits_100_columns_with_long_keys_and_specs():
    g = _groups()
    text = summary.render(g.rows(), g.totals(), width=100)
    assert max(len(line) for line in text.splitlines()) <= 100, text
    assert "…" in text                                   # the long key was shortened, not wrapped
    assert "[1] eg:k=0,remap=none,scale=1000000.0,sign=bit,zeros=plain  (lossy)" in text
    assert "[2] zstd:level=3" in text


def test_factor_is_raw_over_coded_next_to_the_ratio():
    assert summary.factor(320 / 800) == "2.5×"
    assert summary.factor(None) == "-" and summary.factor(0) == "-"
    g = _groups()
    text = summary.render(g.rows(), g.totals(), width=100)
    row = next(ln.split() for ln in text.splitlines() if ln.split()[:2] == ["[1]", "1"])
    assert row[5:7] == ["0.400", "2.5×"], row          # ratio, then factor, on the same row


def test_totals_add_up_every_group():
    g = _groups()
    total = {r["codec"]: r for r in g.totals()}
    eg = total[g.specs[1]]
    assert eg["bits"] == 360 and eg["raw_bytes"] == 200 and eg["keys"] == 2
    assert abs(eg["ratio_theory"] - 360 / 1600) < 1e-12
    assert total[g.specs[2]]["not_encodable"] == 2 and total[g.specs[2]]["keys"] == 0
    text = summary.render(g.rows(), g.totals())
    assert "all 2 groups" in text and f"{1600 / 360:.1f}×" in text
    assert "1.0e-02" in text                         # rel L2 error of the lossy codec: sqrt(1e-12 / 1e-8)


def test_many_groups_print_totals_only():
    g = Groups((), ["zstd:level=3"])
    for i in range(summary.MAX_GROUPS + 5):
        key = f"R_0_E_0_S_{i}_B_0/w"
        g.declare(key)
        g.add(KeyResult(key, "raw", 1, "float32", 4, 16, 80, 128, 16, 80))
        g.add(KeyResult(key, "zstd:level=3", 1, "float32", 4, 16, 80, 64, 8, 72))
    text = summary.render(g.rows(), g.totals())
    assert "R_0_E_0_S_3_B_0" not in text
    assert f"({summary.MAX_GROUPS + 5} groups: every row is in --csv" in text
    assert "2.0×" in text


def test_report_cli_summary_fits_100_columns(store, tmp_path):
    proc = gradstore_cli("report", store, *[a for s in SPECS for a in ("--codec", s)], "-q",
                         "--results", tmp_path / "r.results", "--group-by", "rank,step")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and max(map(len, lines)) <= 100, proc.stdout
    assert "rank=0,step=0" in proc.stdout and "×" in proc.stdout and "all " in proc.stdout
    rep = report.run(store, [EG], group_by="rank", results=False, progress=False)
    assert [r["codec"] for r in rep.totals][0] == "raw" and len(rep.totals) == 2
    rep.close()
