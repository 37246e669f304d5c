#!/usr/bin/env python
"""Benchmark gradstore-convert against the old HDF5 "factory", on the same .pt bucket files.

    python tools/bench_convert.py                        # 48 bf16 buckets of 64 MiB, -j 2
    python tools/bench_convert.py --dtype float32 --files 32 --outdir /dev/shm

It writes a directory of realistic DDP bucket files (R_0_E_0_S_{s}_B_{b}.pt,
each {module: gradient} filled to the bucket cap the way DDP fills buckets),
reads them once so both paths start from a warm page cache, then converts
them, each run in a fresh process:

* ``hdf5``: the old factory: torch.load, one h5py dataset per module in one
  pack, an array_equal read-back check per tensor (what the factory did
  before deleting a .pt), and an fsync at the end (a store fsyncs on
  close).  HDF5 has no bf16, so bf16 is written as float32.
* ``hdf5-nocheck``: the same without the read-back, the fastest HDF5 path.
* ``gradstore -j N``: ``gradstore.convert.convert`` (the function the CLI
  calls) with N reader processes; every tensor is checksum-verified.

Times are wall clock from the start of each run, imports included (the
readers' start-up and torch import are part of a gradstore run), to the end
of the conversion, fsync included.  "steady" leaves the start-up out: the
rate from the end of the first file to the end, what a long conversion of
thousands of files sees.

Memory: the growth of each process's peak RSS (VmHWM) over its RSS once
its imports are done: the writer and the hdf5 process in the run itself, a
reader in a process of its own that runs the readers' code on the largest
file after a warm-up (forked readers page in torch's libraries, which would
blur what the data costs).  Also the peak of the whole process tree (PSS,
shared pages counted once) plus the converter's spool on tmpfs, sampled
every 100 ms.  Targets (issue 4): gradstore -j 2 at least 2x the hdf5 path;
peak RSS at most 3x the largest bucket.

``--writer-read`` measures the writer's side alone, on the same files: the
bytes a reader found in a source are taken either with pread into memory
(what the writer does, so that a source truncated under it is a short read)
or from a map of the source (what it did before: no copy, but a SIGBUS that
kills the writer when the file is truncated meanwhile); each then checksummed
again and written into a fresh store, the two ways taking turns.

Output on a slow disk measures the disk: both paths then run at its fsync
rate, and the ratio is the ratio of bytes written.  --outdir /dev/shm takes
the disk out.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


# -- the data ---------------------------------------------------------------------------

def module_shapes(hidden: int, layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """A decoder-only LLM's parameters, in registration order."""
    inter = hidden * 11 // 4
    shapes = [("model.embed_tokens.weight", (8192, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes += [(f"{p}.input_layernorm.weight", (hidden,)),
                   (f"{p}.self_attn.q_proj.weight", (hidden, hidden)),
                   (f"{p}.self_attn.k_proj.weight", (hidden, hidden)),
                   (f"{p}.self_attn.v_proj.weight", (hidden, hidden)),
                   (f"{p}.self_attn.o_proj.weight", (hidden, hidden)),
                   (f"{p}.post_attention_layernorm.weight", (hidden,)),
                   (f"{p}.mlp.gate_proj.weight", (inter, hidden)),
                   (f"{p}.mlp.up_proj.weight", (inter, hidden)),
                   (f"{p}.mlp.down_proj.weight", (hidden, inter))]
    return shapes + [("model.norm.weight", (hidden,)), ("lm_head.weight", (8192, hidden))]


def buckets_of(shapes, cap: int, itemsize: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """DDP buckets: parameters in reverse order, a new bucket when the cap would be passed."""
    out, cur, size = [], [], 0
    for name, shape in reversed(shapes):
        n = itemsize
        for d in shape:
            n *= d
        if cur and size + n > cap:
            out.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    return out + [cur]


def generate(src: Path, files: int, bucket_mb: int, dtype_name: str, hidden: int) -> int:
    """Write ``files`` bucket files; returns the largest bucket's tensor bytes."""
    import torch
    dtype = getattr(torch, dtype_name)
    itemsize = torch.empty((), dtype=dtype).element_size()
    layers = 4
    plan = buckets_of(module_shapes(hidden, layers), bucket_mb * MiB, itemsize)
    while len(plan) < files and layers < 512:    # more layers until one step fills the files
        layers *= 2
        plan = buckets_of(module_shapes(hidden, layers), bucket_mb * MiB, itemsize)
    src.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    largest = 0
    for b, bucket in enumerate(plan[:files]):
        tensors = {name: (torch.randn(shape, generator=gen) * 1e-3).to(dtype) for name, shape in bucket}
        nbytes = sum(t.numel() * itemsize for t in tensors.values())
        largest = max(largest, nbytes)
        torch.save(tensors, src / f"R_0_E_0_S_0_B_{b}.pt")
    return largest


# -- one run, in its own process ---------------------------------------------------------

def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


FIRST: dict[str, float] = {}   # when the first file was done, and its bytes: for the steady rate


def run_hdf5(src: Path, out: Path, check: bool) -> int:
    """The old factory, file by file; returns the source tensor bytes."""
    import h5py
    import numpy as np
    import torch
    total = 0
    with h5py.File(out / "pack_000.h5", "w") as f:
        for path in sorted(src.glob("*.pt")):
            r, e, s, b = path.stem.split("_")[1::2]
            tensors = torch.load(path, weights_only=True, map_location="cpu")
            for module, t in tensors.items():
                arr = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
                ds = f.create_dataset(f"/R_{r}_E_{e}_S_{s}/B_{b}/{module}", data=arr)
                if check and not np.array_equal(ds[()], arr):
                    raise SystemExit(f"{path}: {module} differs after writing")
                total += t.numel() * t.element_size()
            f.flush()
            del tensors
            FIRST.setdefault("time", time.perf_counter())
            FIRST.setdefault("bytes", total)
    fd = os.open(out / "pack_000.h5", os.O_RDONLY)   # durable, as a store's close() is
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return total


def reader_growth(src: Path) -> int:
    """Peak RSS growth of a reader process (gradstore's own read_part) on the largest file.

    Measured here, in a process of our own, after a warm-up read: readers of a
    real run are forked from a server and then page in torch's libraries,
    which would blur what the data costs.
    """
    from gradstore.convert import source, worker
    files = sorted(src.glob("*.pt"), key=lambda p: p.stat().st_size)
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as spool:
        for path in (files[0], files[-1]):
            reset_peak()
            base = rss_now()
            batch = worker.read_part(source.module_for(path).plan(path)[0], None, spool)
            if batch.file is not None:   # tensors found in the source stay there
                os.unlink(batch.file)
    return peak_rss() - base


def run_gradstore(src: Path, out: Path, jobs: int) -> int:
    from gradstore.convert import convert
    from gradstore.convert.progress import Display

    class First(Display):
        def advance(self, report, nbytes):
            FIRST.setdefault("time", time.perf_counter())
            FIRST.setdefault("bytes", report.bytes_read)

    report = convert([src], out / "run.gs", jobs=jobs, display=First())
    if not report.ok:
        raise SystemExit(f"conversion failed: {report.errors[:3]}")
    return report.bytes_read


def peak_rss() -> int:
    """This process's peak RSS since reset_peak() (VmHWM; ru_maxrss may hold the parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def child_main(argv: list[str]) -> None:
    kind, src, out = argv[0], Path(argv[1]), Path(argv[2])
    if kind == "generate":   # here, so that the parent never holds torch or the data
        print(json.dumps({"largest": generate(src, int(argv[3]), int(argv[4]), argv[5], int(argv[6]))}))
        return
    if kind == "reader":     # what one reader holds while it reads the largest bucket
        print(json.dumps({"growth": reader_growth(src)}))
        return
    if kind == "idle":       # the RSS of a process with the imports of a reader or the writer
        if argv[3] == "reader":
            import torch  # noqa: F401
        import gradstore.convert  # noqa: F401
        import tqdm  # noqa: F401
        print(json.dumps({"rss": rss_now()}))
        return
    t0 = time.perf_counter()     # imports count: readers pay theirs inside the run
    if kind.startswith("hdf5"):
        import h5py  # noqa: F401
        import numpy  # noqa: F401
        import torch  # noqa: F401
    else:
        import gradstore.convert  # noqa: F401
    reset_peak()
    base = rss_now()
    if kind == "gradstore":
        nbytes = run_gradstore(src, out, int(argv[3]))
    else:
        nbytes = run_hdf5(src, out, check=(kind == "hdf5"))
    end = time.perf_counter()
    print(json.dumps({
        "seconds": end - t0, "bytes": nbytes, "base": base, "peak_self": peak_rss(),
        "steady": (nbytes - FIRST["bytes"]) / (end - FIRST["time"]),
    }))


# -- sampling a process tree -------------------------------------------------------------

def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _status(pid: int) -> dict[str, int]:
    """PSS and VmHWM (peak RSS) of a process, in bytes; empty if it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["pss"] = int(line.split()[1]) * 1024
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    out[line[2:5].lower()] = int(line.split()[1]) * 1024
    except OSError:
        return {}
    return out


def _spool_bytes(root_pid: int) -> int:
    total = 0
    for base in (Path("/dev/shm"), Path(tempfile.gettempdir())):
        for d in base.glob(f"gradstore-convert-{root_pid}-*"):
            for f in d.iterdir():
                try:
                    total += f.stat().st_blocks * 512
                except OSError:
                    pass
    return total


class TreeSampler(threading.Thread):
    """Peak of a process tree's PSS (shared pages counted once) plus the converter's spool."""

    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.done = pid, every, 0, False

    def run(self) -> None:
        while not self.done:
            pids, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                pids.append(p)
                todo += _children(p)
            now = _spool_bytes(self.pid)
            for p in pids:
                st = _status(p)
                now += st.get("pss", 0)
            self.peak = max(self.peak, now)
            time.sleep(self.every)


def measure(args: list[str]) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.Popen([sys.executable, __file__, "_child", *args], stdout=subprocess.PIPE,
                            text=True, env=env)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.done = True
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step {args[0]} failed")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["tree_peak"] = sampler.peak
    return result


def _fs_of(path: Path) -> str:
    """The file system type holding ``path`` (from /proc/mounts), e.g. ext4 or tmpfs."""
    best, fs = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                _, mnt, typ = line.split()[:3]
                if str(path.resolve()).startswith(mnt) and len(mnt) > len(best):
                    best, fs = mnt, typ
    except OSError:
        pass
    return f"{fs} ({path})"


def drop_output(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)


def warm(src: Path) -> None:
    for p in sorted(src.glob("*.pt")):
        with open(p, "rb") as f:
            while f.read(16 * MiB):
                pass


def _from_map(batch):
    """The writer before: read-only views of a map of the source (SIGBUS if it shrinks)."""
    from gradstore.convert.transfer import FileMap
    refs = [r for r in batch.refs if r.in_source]
    fd = os.open(batch.source, os.O_RDONLY)
    try:
        m = FileMap(fd, min(r.offset for r in refs), max(r.offset + r.nbytes for r in refs),
                    sum(r.nbytes for r in refs))
    finally:
        os.close(fd)
    return m, [(r, m.view(r.dtype, r.shape, r.offset)) for r in refs]


def _from_pread(batch):
    """The writer now: the same bytes read with pread (a short read if the file shrinks)."""
    from gradstore.convert.transfer import _read_source
    copies = _read_source(batch)
    return None, [(r, copies[i]) for i, r in enumerate(batch.refs) if r.in_source]


def writer_read(src: Path, out: Path, rounds: int) -> None:
    """Time the writer's two ways to take source bytes, side by side (see the docstring)."""
    import gradstore
    from gradstore.convert.source import Part
    from gradstore.convert.spool import Spool
    from gradstore.convert.worker import read_part
    files = sorted(src.glob("*.pt"))
    with Spool() as spool:
        batches = [read_part(Part(str(f), "pt"), None, str(spool.path)) for f in files]
    assert all(b.file is None for b in batches), "every tensor should sit in its source"
    nbytes = sum(b.nbytes for b in batches)
    times: dict[str, list[float]] = {"map": [], "pread": []}
    ways = {"map": _from_map, "pread": _from_pread}
    for i in range(rounds):
        for name in (("map", "pread") if i % 2 == 0 else ("pread", "map")):
            drop_output(out)
            warm(src)
            with gradstore.open(out / "w.gs", "w") as gs:
                t0 = time.perf_counter()
                for b in batches:
                    m, pairs = ways[name](b)
                    for r, arr in pairs:
                        assert gradstore.checksum(arr) == r.checksum
                        gs.write(r.key, arr)
                    del pairs, arr
                    if m is not None:
                        m.close()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"bench_convert --writer-read: {len(files)} files, {nbytes / MiB:.0f} MiB, output on "
          f"{_fs_of(out)}; median of {rounds} rounds, taking turns")
    for name in ways:
        print(f"  {name:<6} {med[name]:7.3f} s  {nbytes / MiB / med[name]:7.0f} MiB/s")
    print(f"pread / map time: {med['pread'] / med['map']:.3f} "
          f"(each round: {', '.join(f'{p / m:.3f}' for p, m in zip(times['pread'], times['map']))})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=48)
    ap.add_argument("--bucket-mb", type=int, default=64, help="DDP bucket cap in MiB")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs per path; the median is reported")
    ap.add_argument("--workdir", type=Path, help="default: a temporary directory, removed after")
    ap.add_argument("--outdir", type=Path,
                    help="where the store and the pack go (default: WORKDIR/out); /dev/shm takes "
                         "the disk out of the measurement")
    ap.add_argument("--writer-read", action="store_true",
                    help="only time the writer taking source bytes by pread against a map of "
                         "the source (--repeat rounds)")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        src = work / "src"
        if args.outdir:
            args.outdir.mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix="out-", dir=args.outdir or work))
        shutil.rmtree(src, ignore_errors=True)
        largest = measure(["generate", str(src), str(out), str(args.files), str(args.bucket_mb),
                           args.dtype, str(args.hidden)])["largest"]
        total = sum(p.stat().st_size for p in src.glob("*.pt"))
        if args.writer_read:
            writer_read(src, out, max(args.repeat, 2))
            return
        idle_reader = measure(["idle", str(src), str(out), "reader"])["rss"]
        idle_writer = measure(["idle", str(src), str(out), "writer"])["rss"]
        reader = measure(["reader", str(src), str(out)])["growth"]
        runs = {"hdf5": ["hdf5"], "hdf5-nocheck": ["hdf5-nocheck"],
                f"gradstore -j {args.jobs}": ["gradstore", str(args.jobs)]}
        results: dict[str, list[dict]] = {k: [] for k in runs}
        for _ in range(args.repeat):          # interleaved, so load changes hit every path alike
            for name, run in runs.items():
                drop_output(out)
                warm(src)
                results[name].append(measure([run[0], str(src), str(out), *run[1:]]))
        args.out_fs = _fs_of(out)
        report(args, largest, total, results, idle_reader, idle_writer, reader)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def report(args, largest: int, total: int, results: dict, idle_reader: int, idle_writer: int,
           reader: int) -> None:
    gs = f"gradstore -j {args.jobs}"
    med = {name: statistics.median(r["seconds"] for r in rs) for name, rs in results.items()}
    typical = {name: min(rs, key=lambda r: abs(r["seconds"] - med[name])) for name, rs in results.items()}
    rate = {name: typical[name]["bytes"] / med[name] for name in results}
    steady = {name: statistics.median(r["steady"] for r in rs) for name, rs in results.items()}
    print(f"bench_convert: {args.files} .pt files of {args.dtype} DDP buckets (cap {args.bucket_mb} MiB), "
          f"{total / MiB:.0f} MiB, largest bucket {largest / MiB:.1f} MiB; output on {args.out_fs}; "
          f"{os.cpu_count()} cores; median of {args.repeat} runs")
    print(f"(idle RSS with the same imports: a reader with torch {idle_reader / MiB:.0f} MiB, "
          f"the gradstore writer {idle_writer / MiB:.0f} MiB)")
    print()
    print(f"{'path':<15}{'seconds':>8}{'MiB/s':>7}{'x hdf5':>7}{'steady':>8}{'x hdf5':>7}   "
          f"{'peak RSS growth, MiB (x bucket)':<40}{'all processes + spool':>22}")
    for name, r in typical.items():
        main = "writer" if name == gs else "main"
        above = r["peak_self"] - r["base"]
        mem = f"{main} {above / MiB:.0f} ({above / largest:.2f})"
        if name == gs:
            mem += f", each reader {reader / MiB:.0f} ({reader / largest:.2f})"
        print(f"{name:<15}{med[name]:>8.2f}{rate[name] / MiB:>7.0f}{rate[name] / rate['hdf5']:>7.2f}"
              f"{steady[name] / MiB:>8.0f}{steady[name] / steady['hdf5']:>7.2f}"
              f"   {mem:<40}{r['tree_peak'] / MiB:>14.0f} MiB PSS")
    print()
    r = typical[gs]
    speed = rate[gs] / rate["hdf5"]
    worst = max(r["peak_self"] - r["base"], reader) / largest
    print(f"throughput: {gs} is {speed:.2f}x the hdf5 factory path "
          f"({rate[gs] / rate['hdf5-nocheck']:.2f}x hdf5 without its read-back check); "
          f"target >= 2x: {'met' if speed >= 2 else 'NOT met'}")
    print(f"steady state (after the first file, start-up left out): {steady[gs] / steady['hdf5']:.2f}x "
          f"the hdf5 factory path ({steady[gs] / steady['hdf5-nocheck']:.2f}x without its check)")
    print(f"memory: the largest peak RSS growth of any gradstore process is {worst:.2f}x the largest "
          f"bucket; target <= 3x: {'met' if worst <= 3 else 'NOT met'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2:])
    else:
        main()
