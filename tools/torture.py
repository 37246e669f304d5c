#!/usr/bin/env python
"""Kill, flip, truncate and fill the disk under gradstore for a while; count what survives.

    python tools/torture.py --seconds 300            # the full loop; exit 1 if anything was hurt
    python tools/torture.py --seconds 20 --mix kill=1
    python tools/torture.py --replay flip:1000017    # one try again, with its findings

Each try is one fault, checked through the public API:

kill      a writer process (tests/crash_writer.py's workload: writes, buckets, overwrites,
          compactions, reopens; it reports each op after it returned) is SIGKILLed at a
          random moment; then open("r"), open("a") and repair must each show every
          returned write, bit-exact, and nothing else but the op in flight.
flip      one bit of a small store (tests/fuzz: written through the API, with variants)
          is flipped, in a segment, an index log, the snapshot or the marker;
truncate  one of those files is cut short; for both, the checks of tests/fuzz/fuzz_check.py:
          no exception but GradstoreError, no wrong bytes from a verified read, no record
          that the fault did not touch lost by open("a") or repair.
enospc    a writer fills a small tmpfs (mount -t tmpfs -o size=4m; without the right to
          mount, RLIMIT_FSIZE with SIGXFSZ ignored, so writes fail with EFBIG) writing
          buckets; the failed bucket must commit none of its tensors, the error must be a
          GradstoreError or an OSError, a retry once there is space must succeed, and
          every returned bucket must read back.

Counts per fault kind: tried, survived, lost (a returned or untouched write missing or
unreadable), wrong (bytes that are not the newest written, a phantom key, a partly
committed bucket, a reader that changed files), crashed (an exception that is not a
GradstoreError, a writer that died by itself). A try counts once per column it hit;
survived means it hit none. Each failure prints a line with ``--replay kind:seed`` to rerun it.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "fuzz")]

import crash_writer as cw  # noqa: E402
import fuzz_build as fb  # noqa: E402
import fuzz_check as fc  # noqa: E402
import fuzz_damage as fd  # noqa: E402
import numpy as np  # noqa: E402
from fuzz_pick import RandomPick  # noqa: E402

import gradstore  # noqa: E402

KINDS = ("kill", "flip", "truncate", "enospc")
COLUMNS = ("tried", "survived", "lost", "wrong", "crashed")
FINDING_COLUMN = {"crash": "crashed", "changed": "wrong", "lost": "lost", "wrong": "wrong",
                  "stale": "wrong"}
BAD = ("lost", "wrong", "crashed")
ALL_FILES = ("segment", "index", "marker")


# -- kill ---------------------------------------------------------------------------------


def _classify_problem(text: str) -> str:
    return "lost" if text.startswith("lost") else "wrong"


def _staged_content_checks(path: str, committed, inflight, rank) -> list[tuple[str, str]]:
    """(column, detail) problems of a killed writer's store: read-only, after open("a"), after repair."""
    out = []

    def stage(name, fn):
        try:
            for p in fn():
                out.append((_classify_problem(p), f"{name}: {p}"))
        except gradstore.GradstoreError as exc:
            out.append(("lost", f"{name}: refused: {exc}"))
        except Exception as exc:  # noqa: BLE001 - what we count
            out.append(("crashed", f"{name}: {fc._short(exc)}"))

    def read_only():
        before = cw.tree_state(Path(path))
        with gradstore.open(path, "r") as r:
            problems = cw.content_problems(r, committed, inflight)
        if cw.tree_state(Path(path)) != before:
            problems.append("wrong: a reader changed the store's files")
        return problems

    def writer():
        with gradstore.open(path, "a", rank=rank) as gs:
            return cw.content_problems(gs, committed, inflight) + [
                f"verify() after recovery: {p}" for p in gs.verify()]

    def repaired():
        gradstore.repair(path)
        with gradstore.open(path, "r") as r:
            return cw.content_problems(r, committed, inflight)

    if committed or os.path.exists(os.path.join(path, "GRADSTORE")):
        stage("open(r)", read_only)
    stage("open(a)", writer)
    stage("repair", repaired)
    return out


def try_kill(seed: int, work: Path) -> tuple[list[tuple[str, str]], str]:
    rng = random.Random(seed)
    rank = rng.choice([None, None, 1])
    plan = {"store": str(work / "s.gs"), "committed": str(work / "committed"),
            "killed_at": str(work / "killed_at"), "seed": seed, "n_ops": 4000, "rank": rank,
            "segment_size": 16384, "checkpoint_every": rng.choice([None, 10, 30]),
            "checkpoint_on_close": rng.choice([1, 8, 1024])}
    at_least = rng.choice([0, 1, 3, 10, 30, 60])
    delay = rng.uniform(0, 0.02)
    pid, status = cw.fork(plan), None
    deadline = time.monotonic() + 30
    try:
        while cw.read_committed(plan["committed"]) < at_least and time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.0005)
        else:
            time.sleep(delay)
            done, status = os.waitpid(pid, os.WNOHANG)
    finally:
        if not done:
            os.kill(pid, signal.SIGKILL)
            status = os.waitpid(pid, 0)[1]
    died = ([] if done == 0 else [("note", "the writer finished before the kill")] if status == 0
            else [("crashed", f"the writer exited by itself (status {status})")])
    ops = cw.make_ops(seed, plan["n_ops"], rank)
    done = cw.read_committed(plan["committed"])
    committed, inflight = cw.replay(ops, done)
    what = f"killed after {done} ops + {delay * 1000:.1f} ms (rank {rank})"
    return died + _staged_content_checks(plan["store"], committed, inflight, rank), what


# -- flip, truncate -----------------------------------------------------------------------


def try_damage(kind: str, seed: int, work: Path) -> tuple[list[tuple[str, str]], str]:
    pick = RandomPick(random.Random(seed))
    root = work / "s.gs"
    truth = fb.build(root, fb.draw_plan(pick))
    m = fd.draw_mutation(pick, root, truth, ALL_FILES, (kind,))
    findings = fc.check_damaged(root, work, truth, [m.apply(root)])
    return [(FINDING_COLUMN[f.kind], str(f)) for f in findings], str(m)


# -- enospc -------------------------------------------------------------------------------


class SmallDisk:
    """A 4 MiB tmpfs, or (without the right to mount) a per-file size limit."""

    def __init__(self, scratch: Path):
        self.dir = scratch / "small"
        self.dir.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.dir)],
                           capture_output=True, text=True)
        self.mounted = r.returncode == 0
        self.how = ("a 4 MiB tmpfs (ENOSPC)" if self.mounted else
                    f"RLIMIT_FSIZE (EFBIG; mount failed: {r.stderr.strip() or r.returncode})")

    def free(self) -> int:
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.dir)], check=False)


def _bucket(seed: int, i: int) -> tuple[str, dict]:
    """Bucket ``i`` of an enospc try: a pure function of (seed, i)."""
    rng = random.Random(seed * 100_003 + i)
    name = f"R_0_E_0_S_{i}_B_0"
    mods = [f"model.layers.{j}.mlp.up_proj.weight" for j in range(rng.randint(2, 6))]
    return name, {m: cw.content(f"{name}/{m}", rng.randint(0, 3)) for m in mods}


def _enospc_child(store: str, report: str, filler: str | None, limit: int | None, seed: int) -> None:
    """Write buckets until one fails; then make room, retry it, write one more, close."""
    fd_ = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def say(line: str) -> None:
        os.write(fd_, (line.replace("\n", " ") + "\n").encode())

    if limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    gs = gradstore.open(store, "a", segment_size=random.Random(seed).choice([65536, 262144]))
    i = 0
    while i < 10_000:
        try:
            gs.write_bucket(*_bucket(seed, i))
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            ours = "gradstore" if isinstance(exc, gradstore.GradstoreError) else "foreign"
            say(f"error {i} {ours} {type(exc).__name__} {exc}")
            break
        say(f"ok {i}")
        i += 1
    if filler:
        os.unlink(filler)
    if limit is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    for j in (i, i + 1):
        try:
            gs.write_bucket(*_bucket(seed, j))
            say(f"retry-ok {j}")
        except Exception as exc:  # noqa: BLE001
            say(f"retry-error {j} {type(exc).__name__} {exc}")
    gs.close()
    say("closed")


def _check_buckets(store: str, seed: int, returned: set[int], failed: int | None) -> list:
    """Every returned bucket bit-exact, none of the failed one, in open("r"), open("a"), repair."""
    out = []

    def look(gs, stage):
        keys = set(gs.keys())
        for i in sorted(returned):
            name, tensors = _bucket(seed, i)
            for m, want in tensors.items():
                key = f"{name}/{m}"
                if key not in keys:
                    out.append(("lost", f"{stage}: returned {key!r} missing"))
                elif not cw.same(np.asarray(fc.verified_read(gs, key)), want):
                    out.append(("wrong", f"{stage}: {key!r} reads other bytes"))
        if failed is not None and failed not in returned:
            name, tensors = _bucket(seed, failed)
            there = [m for m in tensors if f"{name}/{m}" in keys]
            if there:
                out.append(("wrong", f"{stage}: the failed bucket {name} left {len(there)} of "
                                     f"{len(tensors)} tensors committed"))

    for stage in ("open(r)", "open(a)", "repair"):
        try:
            if stage == "repair":
                gradstore.repair(store)
            with gradstore.open(store, "a" if stage == "open(a)" else "r") as gs:
                look(gs, stage)
        except gradstore.GradstoreError as exc:
            out.append(("lost", f"{stage}: refused: {exc}"))
        except Exception as exc:  # noqa: BLE001
            out.append(("crashed", f"{stage}: {fc._short(exc)}"))
    return out


def try_enospc(seed: int, work: Path, disk: SmallDisk) -> tuple[list[tuple[str, str]], str]:
    rng = random.Random(seed)
    store = disk.dir / f"s{seed}.gs"
    report = work / "report"
    filler, limit = None, None
    room = rng.randint(40_000, 1_500_000)
    if disk.mounted:
        filler = disk.dir / f"filler{seed}"
        with open(filler, "wb") as f:
            f.write(bytes(max(0, disk.free() - room)))
    else:
        limit = room // 3
    out: list[tuple[str, str]] = []
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _enospc_child(str(store), str(report), filler and str(filler), limit, seed)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        lines = report.read_text().splitlines() if report.exists() else []
        if status != 0:
            out.append(("crashed", f"the writer died (status {status}); its report ends {lines[-3:]}"))
        returned = {int(ln.split()[1]) for ln in lines if ln.startswith(("ok ", "retry-ok "))}
        failed = None
        for ln in lines:
            if ln.startswith("error "):
                failed = int(ln.split()[1])
                if str(disk.dir) not in ln:
                    out.append(("note", f"the failed write's error names no file: {ln[:160]}"))
                if ln.split()[2] == "foreign" and ln.split()[3] not in ("OSError",):
                    out.append(("crashed", f"the failed write raised {ln}"))
            if ln.startswith("retry-error"):
                column = "wrong" if "KeyExistsError" in ln else "crashed"
                out.append((column, f"a retry once there was room failed: {ln}"))
        out += _check_buckets(str(store), seed, returned, failed)
        what = f"{len(returned)} buckets returned, room {room} B; " + "; ".join(
            ln[:160] for ln in lines if not ln.startswith(("ok ", "retry-ok ", "closed")))
        return out, what
    finally:
        shutil.rmtree(store, ignore_errors=True)
        if filler:
            Path(filler).unlink(missing_ok=True)


# -- the loop -----------------------------------------------------------------------------


def run_try(kind: str, seed: int, scratch: Path, disk: SmallDisk | None):
    work = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=scratch))
    try:
        if kind == "kill":
            return try_kill(seed, work)
        if kind == "enospc":
            return try_enospc(seed, work, disk)
        return try_damage(kind, seed, work)
    except Exception as exc:  # noqa: BLE001 - a fault of the harness or of the store
        return [("crashed", f"torture harness: {fc._short(exc)}")], "(setup)"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def parse_mix(text: str) -> list[str]:
    """"kill=2,flip=3" -> the kinds of one round, each repeated by its weight (ValueError if bad)."""
    out = []
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind not in KINDS or not (weight or "1").isdigit():
            raise ValueError(f"bad --mix part {part!r} (kinds: {', '.join(KINDS)}; weights: counts)")
        out += [kind] * int(weight or 1)
    if not out:
        raise ValueError("--mix gives every kind a weight of 0")
    return out


def table(counts: dict[str, Counter]) -> str:
    rows = [f"{'kind':10}" + "".join(f"{c:>10}" for c in COLUMNS)]
    total = Counter()
    for kind, c in counts.items():
        total.update(c)
        rows.append(f"{kind:10}" + "".join(f"{c[col]:>10}" for col in COLUMNS))
    rows.append(f"{'total':10}" + "".join(f"{total[col]:>10}" for col in COLUMNS))
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300, help="how long to run (default 300)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the first try (default 1)")
    ap.add_argument("--mix", default="kill=2,flip=3,truncate=3,enospc=1",
                    help="fault kinds and their weights in each round (default %(default)s)")
    ap.add_argument("--dir", help="scratch directory (default: a new one on /dev/shm or in TMPDIR)")
    ap.add_argument("--replay", metavar="KIND:SEED", help="run one try again and print its findings (a kill try "
                    "depends on timing too)")
    ap.add_argument("--show", type=int, default=3, help="failures printed per kind and column")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.show < 0:
        ap.error("--seconds must be > 0 and --show >= 0")
    try:
        mix = parse_mix(args.mix)
    except ValueError as exc:
        ap.error(str(exc))
    base = args.dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    scratch = Path(tempfile.mkdtemp(prefix="gradstore-torture-", dir=base))
    needs_disk = args.replay.startswith("enospc") if args.replay else "enospc" in mix
    disk = SmallDisk(scratch) if needs_disk else None
    try:
        if disk is not None:
            print(f"enospc: {disk.how}")
        if args.replay:
            kind, _, seed = args.replay.partition(":")
            problems, what = run_try(kind, int(seed), scratch, disk)
            print(f"{kind}:{seed}: {what}")
            for column, detail in problems:
                print(f"  {column}: {detail}")
            return 1 if any(column in BAD for column, _ in problems) else 0
        counts = {k: Counter() for k in KINDS if k in mix}
        shown: Counter = Counter()
        notes: Counter = Counter()
        start, n = time.monotonic(), 0
        while time.monotonic() - start < args.seconds:
            kind = mix[n % len(mix)]
            seed = args.seed * 1_000_000 + n
            n += 1
            problems, what = run_try(kind, seed, scratch, disk)
            c = counts[kind]
            c["tried"] += 1
            hit = {column for column, _ in problems if column in BAD}
            c.update(hit)
            c["survived"] += not hit
            notes.update(f"{kind}: {d.split(':')[0]}" for col, d in problems if col == "note")
            for column in sorted(hit):
                shown[kind, column] += 1
                if shown[kind, column] <= args.show:
                    first = next(d for col, d in problems if col == column)
                    print(f"{column:8} {kind}:{seed} ({what[:200]}): {first[:300]}  "
                          f"[--replay {kind}:{seed}]", flush=True)
        print(f"\n{n} tries in {time.monotonic() - start:.0f} s (seed {args.seed}, mix {args.mix})")
        print(table(counts))
        for note, k in notes.items():
            print(f"note: {note}: {k} tries")
        bad = sum(c[col] for c in counts.values() for col in BAD)
        return 1 if bad else 0
    finally:
        if disk is not None:
            disk.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
