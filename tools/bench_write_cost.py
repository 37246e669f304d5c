"""What writing captured gradients costs this machine's CPU, and why (one run, side by side).

    python tools/bench_write_cost.py grads/fp32.gs            # real buckets from make_grads
    python tools/bench_write_cost.py grads/fp32.gs --idle 20 --dir /mnt/nvme

A capture's writer thread appends each bucket to the store. Through the page
cache, on a virtual machine whose balloon takes back free guest memory (free
page reporting), every page the page cache grows into is fresh memory the
host must fault in, and the guest pays it in CPU time: that is what a
capture cost a training step when every core is busy training, and why
capture now writes with direct I/O (gradstore.direct). Printed, in CPU
milliseconds per MB written:

  anonymous memory, first touch and touched again (numpy)
  Store.write_bucket of the real buckets into a new store: after an idle
      pause (free memory given back to the host), and right after touching
      and freeing as much memory as it writes
  Store.write_bucket with direct_io=True (gradstore.direct: staged in one
      reused buffer, written with O_DIRECT), after the same idle pause
  the same bytes written with O_DIRECT (no page cache) from one reused buffer:
      the floor

Results depend on the machine (on bare metal the first two rows agree).
"""
from __future__ import annotations

import argparse
import mmap
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gradstore  # noqa: E402
from gradstore.keys import bucket_name, parse_bucket  # noqa: E402

MB = 1e6


def cpu_ms_per_mb(fn, nbytes: int) -> tuple[float, float]:
    """(CPU ms per MB, wall MB/s) of fn()."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return cpu * 1e3 / (nbytes / MB), nbytes / MB / wall


def touch(nbytes: int) -> None:
    a = np.ones(nbytes // 8)
    del a


def write_store(buckets: list, path: Path, times: int, direct_io: bool = False) -> None:
    """The buckets ``times`` over (as epochs); close() fsyncs, inside the clock as a capture's is."""
    shutil.rmtree(path, ignore_errors=True)
    with gradstore.open(path, "w", direct_io=direct_io) as gs:
        for epoch in range(times):
            for name, tensors in buckets:
                k = parse_bucket(name)
                gs.write_bucket(bucket_name(k.rank, epoch, k.step, k.bucket), tensors)


def write_direct(path: Path, nbytes: int, chunk: int = 8 << 20) -> int:
    """Whole ``chunk``s from one reused page-aligned buffer until ``nbytes`` are written
    (O_DIRECT takes aligned lengths only); returns the bytes written."""
    buf = mmap.mmap(-1, chunk)
    buf.write(b"\x01" * chunk)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        done = 0
        while done < nbytes:
            done += os.pwritev(fd, [buf], done)
        os.fsync(fd)
        return done
    finally:
        os.close(fd)
        buf.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", help="a store of real gradient buckets (tools/make_grads.py)")
    ap.add_argument("--idle", type=float, default=20.0,
                    help="seconds to wait for freed memory to go back to the host (default 20)")
    ap.add_argument("--dir", help="where to write (default: a temporary directory)")
    ap.add_argument("--times", type=int, default=4, help="write the buckets this many times (default 4)")
    args = ap.parse_args(argv)

    buckets, total = [], 0
    with gradstore.open(args.store) as src:
        for name in src.buckets():
            tensors = {m: np.array(v) for m, v in src.bucket(name).items()}   # copies, in memory
            buckets.append((name, tensors))
            total += sum(a.nbytes for a in tensors.values())
    total *= args.times
    work = Path(tempfile.mkdtemp(prefix="gradstore-write-", dir=args.dir))
    try:
        gib = 1 << 30
        first, _ = cpu_ms_per_mb(lambda: touch(gib), gib)
        a = np.ones(gib // 8)
        again, _ = cpu_ms_per_mb(lambda: a.fill(2.0), gib)
        del a
        print(f"{len(buckets)} real buckets written {args.times} times, {total / MB:.0f} MB; CPU ms per MB written (wall MB/s)")
        print(f"  anonymous memory, first touch        {first:6.2f}")
        print(f"  anonymous memory, touched again      {again:6.2f}")
        time.sleep(args.idle)
        cold, cold_rate = cpu_ms_per_mb(lambda: write_store(buckets, work / "cold.gs", args.times), total)
        print(f"  {f'write_bucket after {args.idle:.0f} s idle':<37}{cold:6.2f}  ({cold_rate:.0f} MB/s)")
        shutil.rmtree(work / "cold.gs")
        time.sleep(args.idle)
        touch(int(total * 1.2))
        warm, warm_rate = cpu_ms_per_mb(lambda: write_store(buckets, work / "warm.gs", args.times), total)
        print(f"  write_bucket into just-freed memory  {warm:6.2f}  ({warm_rate:.0f} MB/s)")
        shutil.rmtree(work / "warm.gs")
        time.sleep(args.idle)
        store_direct, store_direct_rate = cpu_ms_per_mb(
            lambda: write_store(buckets, work / "direct.gs", args.times, direct_io=True), total)
        print(f"  {f'write_bucket direct_io, {args.idle:.0f} s idle':<37}{store_direct:6.2f}  "
              f"({store_direct_rate:.0f} MB/s)")
        shutil.rmtree(work / "direct.gs")
        time.sleep(args.idle)
        chunk = 8 << 20
        direct, direct_rate = cpu_ms_per_mb(lambda: write_direct(work / "direct.bin", total, chunk),
                                            -(-total // chunk) * chunk)
        print(f"  O_DIRECT, one reused buffer          {direct:6.2f}  ({direct_rate:.0f} MB/s)")
        print(f"fresh page-cache memory costs {cold / max(warm, 1e-9):.1f}x the CPU of reused memory here; "
              f"write_bucket with direct_io {cold / max(store_direct, 1e-9):.1f}x less than the cold "
              f"write, bare O_DIRECT {cold / max(direct, 1e-9):.0f}x less")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
