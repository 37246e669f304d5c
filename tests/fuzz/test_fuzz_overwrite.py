"""Repair must know which record of a key is newest, and index only real records.

A key written twice whose newest record is then damaged (header, payload,
segment cut or deleted) must, after repair or after open("a") (the index
files intact, so they still vouch for the newest record), read back as the
new value, or be named as damaged (by repair's error or result, by open's
error, or by verify()); silently reading back the old value is the failure.
(With the index files gone as well, nothing left knows the key of a record
whose header is destroyed, so that case is not asked for.) Records that lie inside another record's payload (a segment
stored as a uint8 tensor) must never become keys.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st

import gradstore

sys.path.insert(0, str(Path(__file__).parent))
import fuzz_build as fb  # noqa: E402
import fuzz_check as fc  # noqa: E402
from fuzz_damage import Mutation  # noqa: E402
from fuzz_settings import SCRATCH, budget  # noqa: E402

KEY = "R_0_E_0_S_1_B_0/model.layers.0.mlp.up_proj.weight"
OTHERS = [f"R_0_E_0_S_{s}_B_1/m" for s in range(4)]
DAMAGE = ("header-flip", "header-zero", "payload-flip", "cut-at-record", "delete-segment")


def _named(key: str, *texts) -> bool:
    return any(key in str(t) for t in texts)


def _write_history(path: Path, before: int, after: int, reopen: bool) -> tuple:
    """KEY v0, ``before`` other keys, KEY v1 (after a reopen or not), ``after`` other keys.
    Returns (old value, new value, Entry of the new record)."""
    old, new = fb.content(KEY, 0), fb.content(KEY, 1)
    gs = gradstore.open(path, "a", segment_size=fb.SEGMENT_SIZE)
    try:
        gs.write(KEY, old)
        for k in OTHERS[:before]:
            gs.write(k, fb.content(k, 0))
        if reopen:
            gs.close()
            gs = gradstore.open(path, "a", segment_size=fb.SEGMENT_SIZE)
        entry = gs.write(KEY, new, overwrite=True)
        for k in OTHERS[before:before + after]:
            gs.write(k, fb.content(k, 0))
    finally:
        gs.close()
    return old, new, entry


def _damage(path: Path, entry, how: str, data) -> Mutation:
    rel = entry.segment
    if how == "header-flip":
        at = entry.offset + data.draw(st.integers(0, entry.header_len - 1), label="header byte")
        return Mutation(rel, "flip", at, bit=data.draw(st.integers(0, 7), label="bit"))
    if how == "header-zero":
        return Mutation(rel, "overwrite", entry.offset, data=bytes(entry.header_len))
    if how == "payload-flip":
        at = entry.offset + entry.header_len + data.draw(
            st.integers(0, max(0, entry.payload_len - 1)), label="payload byte")
        return Mutation(rel, "flip", at, bit=data.draw(st.integers(0, 7), label="bit"))
    if how == "cut-at-record":
        return Mutation(rel, "truncate", entry.offset)
    return Mutation(rel, "delete")


def test_damaged_newest_version_is_never_silently_replaced_by_the_older(long_run):
    @budget(long_run, 40)
    @given(before=st.integers(0, 2), after=st.integers(0, 2), reopen=st.booleans(),
           how=st.sampled_from(DAMAGE), via=st.sampled_from(["repair", "open-a"]),
           data=st.data())
    def run(before, after, reopen, how, via, data):
        work = Path(tempfile.mkdtemp(prefix="gradstore-fuzz-", dir=SCRATCH))
        try:
            path = work / "s.gs"
            old, new, entry = _write_history(path, before, after, reopen)
            if how == "payload-flip" and entry.payload_len == 0:
                how = "header-zero"
            m = _damage(path, entry, how, data)
            note(f"damage: {m}  (newest record of {KEY} at {entry.offset}, "
                 f"header {entry.header_len} B, payload {entry.payload_len} B)")
            m.apply(path)
            reports = []
            try:
                if via == "repair":
                    reports.append(gradstore.repair(path))
                else:
                    gradstore.open(path, "a").close()
            except gradstore.GradstoreError as exc:
                reports.append(exc)
            with gradstore.open(path, "r") as gs:
                reports += gs.verify()
                try:
                    got = np.array(fc.verified_read(gs, KEY))
                except (gradstore.GradstoreError, KeyError) as exc:
                    got = exc
            if isinstance(got, np.ndarray) and fb.same(got, new):
                return
            said = "the old value" if isinstance(got, np.ndarray) and fb.same(got, old) else repr(got)
            assert _named(KEY, *reports), (
                f"after {m} and {via}, {KEY!r} reads {said}, and neither repair nor verify() "
                f"names it: {reports}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    run()


def test_records_inside_a_payload_never_become_keys(long_run):
    @budget(long_run, 20)
    @given(nkeys=st.integers(1, 3), header_byte=st.integers(0, 63), bit=st.integers(0, 7),
           via=st.sampled_from(["repair", "open-a-without-index"]))
    def run(nkeys, header_byte, bit, via):
        work = Path(tempfile.mkdtemp(prefix="gradstore-fuzz-", dir=SCRATCH))
        try:
            inner = work / "inner.gs"
            with gradstore.open(inner, "a") as gs:
                for i in range(nkeys):
                    gs.write(f"inner/k{i}", np.full(10 + i, i, np.float32))
            blob = np.fromfile(inner / "main" / "data-000000.bin", dtype=np.uint8)
            path = work / "s.gs"
            with gradstore.open(path, "a") as gs:
                entry = gs.write("outer/blob", blob)
                gs.write("outer/after", np.arange(5, dtype=np.int64))
            m = Mutation(entry.segment, "flip", entry.offset + header_byte % entry.header_len, bit=bit)
            note(f"damage: {m}")
            m.apply(path)
            try:
                if via == "repair":
                    gradstore.repair(path)
                else:
                    for f in (path / "main").glob("index*"):
                        f.unlink()
                    gradstore.open(path, "a").close()
            except gradstore.GradstoreError:
                pass
            with gradstore.open(path, "r") as gs:
                phantoms = [k for k in gs.keys() if k.startswith("inner/")]
            assert not phantoms, f"after {m} and {via}: records inside outer/blob's payload " \
                                 f"became keys: {phantoms}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
    run()
