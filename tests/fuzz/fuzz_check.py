"""The properties a damaged store must keep, checked through the public API.

For a store whose files were damaged (fuzz_damage), ``check_damaged`` runs
open("r"); the writer's recovery (open "a" for every namespace) then repair;
and repair alone (each on its own copy), reads every key plainly and verified
through open("r"), runs verify(), and returns findings:

crash    an exception that is not a GradstoreError. KeyError is allowed for a key
         that keys() does not list (how a mapping reports a missing key; the store
         raises it for gs[key], entry() and variant()); for a listed key it is a crash
wrong    a verified read returned bytes that were never written under that id,
         or an id that was never written reads back (a phantom), or gs[key] differs
         from the verified read
stale    after open("a") or repair, a verified read returned an older version of the id
         while nothing (verify(), repair's result or an error) named the id as damaged,
         though its newest record was intact or the index files were (so it was knowable)
         (a reader may see an older state: it cannot tell a damaged log from a writer's
         uncommitted tail, so open("r") is held only to "wrong")
lost     an id whose newest record was not touched is missing or unreadable
         after open("a") or repair (with only index files damaged: every id)
changed  open("r") modified files
"""
from __future__ import annotations

import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gradstore
from crash_writer import tree_state
from fuzz_build import Truth, same
from fuzz_damage import file_class, touched_ids

# KeyError: a missing key (gs[key], entry, variant); it must be a key that is not listed.
ALLOWED = (gradstore.GradstoreError,)


@dataclass(frozen=True)
class Finding:
    kind: str
    stage: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} [{self.stage}] {self.detail}"


def _short(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {str(exc)[:160]}{where}"


def verified_read(gs, key: str) -> np.ndarray:
    """The checksum-verified read."""
    return gs.read(key, verify=True)


class Checker:
    """Runs one stage's reads and collects findings."""

    def __init__(self, truth: Truth, touched: set[str], marker_touched: bool = False,
                 index_touched: bool = False):
        self.truth = truth
        self.touched = touched
        self.marker_touched = marker_touched
        self.index_touched = index_touched
        self.findings: list[Finding] = []
        self.reported: set[str] = set()   # ids named by verify(), repair or an error, this stage
        self.extra: dict[str, np.ndarray] = {}  # keys the checker wrote itself (the probe)

    def add(self, kind: str, stage: str, detail: str) -> None:
        self.findings.append(Finding(kind, stage, detail))

    def call(self, stage: str, what: str, fn, *args, **kwargs):
        """fn(*args); a GradstoreError is remembered (and returned), anything else is a crash."""
        try:
            return fn(*args, **kwargs)
        except ALLOWED as exc:
            self.note_named(str(exc))
            return exc
        except Exception as exc:  # noqa: BLE001 - the property under test
            self.add("crash", stage, f"{what}: {_short(exc)}")
            return exc

    def note_named(self, text: str) -> None:
        for id_ in self.truth.versions:
            if id_.split("\0")[0] in text:
                self.reported.add(id_)

    # -- one open store -------------------------------------------------------------

    def read_all(self, gs, stage: str, strict: bool) -> None:
        """Every listed and every written id, read plainly and verified."""
        listed = self.call(stage, "keys()", lambda: set(gs.keys()))
        if isinstance(listed, BaseException):
            listed = set()
        problems = self.call(stage, "verify()", gs.verify)
        if isinstance(problems, list):
            for p in problems:
                self.note_named(f"{getattr(p, 'key', '')}")
        for key in sorted(listed | set(self.truth.tensor_keys()) | set(self.extra)):
            self._read_tensor(gs, stage, strict, key, key in listed)
        for id_ in self.truth.variant_ids():
            self._read_variant(gs, stage, strict, id_)

    def _read_tensor(self, gs, stage: str, strict: bool, key: str, listed: bool) -> None:
        plain = self._guard(stage, f"gs[{key!r}]", listed, lambda: np.array(gs[key]))
        got = self._guard(stage, f"verified read of {key!r}", listed,
                          lambda: np.array(verified_read(gs, key)))
        self._judge(stage, strict, key, got)
        if isinstance(got, np.ndarray) and isinstance(plain, np.ndarray) and not same(got, plain):
            self.add("wrong", stage, f"gs[{key!r}] differs from the verified read of it")

    def _read_variant(self, gs, stage: str, strict: bool, id_: str) -> None:
        key, spec = id_.split("\0")
        got = self._guard(stage, f"gs.variant({key!r}, {spec!r}, verify=True)", False,
                          lambda: np.array(gs.variant(key, spec, verify=True)))
        self._judge(stage, strict, id_, got)

    def _guard(self, stage: str, what: str, listed: bool, fn):
        """fn(): its value, or the GradstoreError / KeyError it raised (else a crash)."""
        try:
            return fn()
        except ALLOWED as exc:
            self.note_named(str(exc))
            return exc
        except KeyError as exc:
            if listed:
                self.add("crash", stage, f"{what}: KeyError for a listed key: {exc}")
            return exc
        except Exception as exc:  # noqa: BLE001
            self.add("crash", stage, f"{what}: {_short(exc)}")
            return exc

    def _judge(self, stage: str, strict: bool, id_: str, got) -> None:
        shown = id_.replace("\0", " @ ")
        versions = self.truth.versions.get(id_)
        if id_ in self.extra:
            versions = [self.extra[id_]]
        if isinstance(got, np.ndarray):
            if versions is None:
                self.add("wrong", stage, f"{shown!r} was never written, yet reads back")
            elif same(got, versions[-1]):
                return
            elif any(same(got, v) for v in versions[:-1]):
                # Which record is newest is knowable when the newest is intact, or when
                # the index files that vouch for it are.
                knowable = id_ not in self.touched or not self.index_touched
                if strict and knowable and id_ not in self.reported:
                    which = [i for i, v in enumerate(versions) if same(got, v)]
                    self.add("stale", stage, f"{shown!r} reads version {which[-1]} of "
                                             f"{len(versions)}, and nothing reports it damaged")
            else:
                self.add("wrong", stage, f"{shown!r} reads bytes that were never written "
                                         f"({got.dtype}{list(got.shape)})")
            return
        if strict and versions is not None and id_ not in self.touched:
            why = "missing" if isinstance(got, KeyError) else f"unreadable ({got})"
            self.add("lost", stage, f"{shown!r} untouched but {why}")


PROBE_KEY = "fuzz/probe"
PROBE = np.arange(7.0)


def _ranks(path: Path) -> list[int | None]:
    """The namespaces of a store as ranks for open(); main (None) last."""
    dirs = [p.name for p in path.iterdir() if p.is_dir()] if path.is_dir() else []
    return sorted(int(d[1:]) for d in dirs if d[:1] == "r" and d[1:].isdigit()) + [None]


def _read_back(ck: Checker, path: Path, stage: str, strict: bool) -> None:
    """open("r"), every id read plainly and verified, verify(), close."""
    gs = ck.call(stage, "open('r')", gradstore.open, path, "r")
    if isinstance(gs, BaseException):
        if strict and isinstance(gs, gradstore.GradstoreError):
            _refused(ck, stage, f"open('r') refused: {_short(gs)}")
        return
    try:
        ck.read_all(gs, stage, strict)
    finally:
        ck.call(stage, "close()", gs.close)


def _recover(ck: Checker, path: Path, stage: str) -> None:
    """Every namespace's writer recovery (open "a" per rank; main takes a new write), then
    read back. A GradstoreError from an open loses nothing yet: repair must then recover."""
    ck.reported = set()
    refused = False
    for rank in _ranks(path):
        gs = ck.call(stage, f"open('a', rank={rank})", gradstore.open, path, "a", rank=rank)
        if isinstance(gs, BaseException):
            refused = True
            continue
        try:
            if rank is None:
                done = ck.call(stage, "a write after recovery", gs.write, PROBE_KEY, PROBE,
                               overwrite=True)
                if not isinstance(done, BaseException):
                    ck.extra[PROBE_KEY] = PROBE
        finally:
            ck.call(stage, "close()", gs.close)
    if not refused:
        _read_back(ck, path, stage, strict=True)


def _refused(ck: Checker, stage: str, why: str) -> None:
    """A refusal to repair loses every untouched id, unless the marker itself was damaged."""
    if ck.marker_touched:
        return
    untouched = [i for i in ck.truth.versions if i not in ck.touched] + list(ck.extra)
    if untouched:
        ck.add("lost", stage, f"{len(untouched)} untouched ids, e.g. {untouched[0]!r}: {why}")


def _repair(ck: Checker, path: Path, stage: str) -> None:
    ck.reported = set()
    res = ck.call(stage, "gradstore.repair", gradstore.repair, path)
    if isinstance(res, BaseException):
        if isinstance(res, gradstore.GradstoreError):
            _refused(ck, stage, f"repair refused: {_short(res)}")
        return
    ck.note_named(repr(res))
    _read_back(ck, path, stage, strict=True)


def check_damaged(damaged: Path, scratch: Path, truth: Truth,
                  ranges: list[tuple[str, int, int]]) -> list[Finding]:
    """All properties of a store whose files were damaged at ``ranges`` (file, start, end);
    ``damaged`` itself is left as it is, each stage works on a copy."""
    ck = Checker(truth, touched_ids(truth, ranges),
                 marker_touched=any(file_class(f) == "marker" for f, _s, _e in ranges),
                 index_touched=any(file_class(f) == "index" for f, _s, _e in ranges))
    before = tree_state(damaged)
    _read_back(ck, damaged, "open(r)", strict=False)
    if tree_state(damaged) != before:
        ck.add("changed", "open(r)", "a reader modified the store's files")

    a = scratch / "a.gs"
    shutil.copytree(damaged, a)
    _recover(ck, a, "open(a)")
    _repair(ck, a, "open(a)+repair")

    ck.extra = {}
    b = scratch / "b.gs"
    shutil.copytree(damaged, b)
    _repair(ck, b, "repair")
    return ck.findings
