"""Damaged stores: never a stray exception, never wrong bytes, never a valid record lost.

Each example writes a small store through the public API (fuzz_build), damages
its files (fuzz_damage: bit flips, overwritten ranges, truncations,
deletions), and checks open("r"), open("a") then repair, and repair alone
(fuzz_check). The default run is short and derandomized, so CI sees the same
examples every time; ``pytest --long tests/fuzz`` runs many more.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
import fuzz_build as fb  # noqa: E402
import fuzz_check as fc  # noqa: E402
import fuzz_damage as fd  # noqa: E402
from fuzz_settings import SCRATCH, budget  # noqa: E402

def summary(findings: list[fc.Finding], shown: int = 8) -> str:
    seen, lines = set(), []
    for f in findings:
        if (f.kind, f.stage, f.detail) not in seen:
            seen.add((f.kind, f.stage, f.detail))
            lines.append(str(f))
    more = f"\n... {len(lines) - shown} more" if len(lines) > shown else ""
    return "\n".join(lines[:shown]) + more


def damage_and_check(plan, data, classes: tuple[str, ...], max_mutations: int) -> None:
    """Build ``plan``, apply 1..max_mutations drawn mutations, assert no findings."""
    work = Path(tempfile.mkdtemp(prefix="gradstore-fuzz-", dir=SCRATCH))
    try:
        root = work / "s.gs"
        truth = fb.build(root, plan)
        ranges, muts = [], []
        for _ in range(data.draw(st.integers(1, max_mutations), label="mutations")):
            m = data.draw(fd.mutations(root, truth, classes))
            if m is None:
                break
            muts.append(m)
            ranges.append(m.apply(root))
        note("damage: " + "; ".join(map(str, muts)))
        touched = fd.touched_ids(truth, ranges)
        note(f"touched ids: {sorted(t.replace(chr(0), ' @ ') for t in touched)}")
        findings = fc.check_damaged(root, work, truth, ranges)
        assert not findings, summary(findings)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# name: (file classes damaged, most mutations per example, examples in the short run).
# "index": only index logs and snapshots are hit, so every key must survive.
CASES = {
    "index": (("index",), 3, 100),
    "segment": (("segment",), 3, 100),
    "marker": (("marker",), 1, 25),
    "any": (("index", "segment", "marker"), 4, 100),
}


@pytest.mark.parametrize("case", CASES)
def test_damage(long_run, case):
    classes, most, examples = CASES[case]

    @budget(long_run, examples)
    @given(plan=fb.plans(), data=st.data())
    def run(plan, data):
        damage_and_check(plan, data, classes, most)
    run()


def test_undamaged_stores_pass_every_check(long_run):
    """The checker itself: a store nobody damaged gives no finding (so each finding is real)."""
    @budget(long_run, 25)
    @given(plan=fb.plans())
    def run(plan):
        work = Path(tempfile.mkdtemp(prefix="gradstore-fuzz-", dir=SCRATCH))
        try:
            truth = fb.build(work / "s.gs", plan)
            findings = fc.check_damaged(work / "s.gs", work, truth, [])
            assert not findings, summary(findings)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    run()
