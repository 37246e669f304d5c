#!/usr/bin/env python
"""Write and read the same DDP gradient buckets with gradstore and with what people use today.

    python tools/bench_io.py                 # ~300 MB of fp32 + bf16 buckets, a 1,000,000-key store
    python tools/bench_io.py --quick         # a smoke run: ~24 MB, 20,000 keys
    python tools/bench_io.py --mb 600 --keys 200000 --dir /mnt/nvme --repeat 3

Data: two training steps of a Llama-style model (embed, q/k/v/o_proj, mlp
gate/up/down, norms, lm_head), step 0 in float32 and step 1 in bfloat16,
grouped into buckets of at most 25 MiB in reverse parameter order, as DDP
does. Every contender writes and reads exactly these tensors, in one run:

* gradstore        one store, ``write_bucket`` per bucket
* torch.save       one ``.pt`` file per bucket (today's practice)
* h5py             one file, datasets at ``/R_{r}_E_{e}_S_{s}/B_{b}/{module}`` (the old
                   layout); h5py has no bfloat16, so bf16 is stored as its uint16 bit pattern
* safetensors      one file per bucket (``safetensors.torch.save_file``)
* f.write          the same bytes, one unbuffered ``write`` per tensor into one file: the limit

Writes are timed twice: "no fsync" stops when the last write returned (data in
the page cache; gradstore's close, which fsyncs, is not included), "fsync at
end" adds fsyncing every file written (and the directory); gradstore's is its
close(). gradstore's timing starts with the store open: creating the empty
store (open(path, "w"), which fsyncs its first log and snapshot) has its own
row; the others create their files inside the timed write. The best of
``--repeat`` rounds counts. Reads use a warm page cache:
every file is read once before any read is timed. "get" is the median
latency of fetching one tensor, over the same sample of keys for everyone:
a gradstore view of an open store; ``torch.load`` of the tensor's bucket
file; ``f[path][()]`` of an open h5py file; ``safe_open(...).get_tensor``.
"full read" reads every byte of every tensor (a uint64 sum over its bytes,
the same function for everyone). The key-count rows use tiny tensors
written through the public API; their gets are timed side by side, in
blocks of 500 that take turns between the stores.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gradstore  # noqa: E402
from gradstore import dtypes  # noqa: E402
from gradstore.fileio import fsync_dir  # noqa: E402
from gradstore.synth import ModelShape, ddp_buckets, gradient  # noqa: E402

BUCKET_BYTES = 25 << 20
CONTENDERS = ("gradstore", "torch.save", "h5py", "safetensors", "f.write")


# -- data --------------------------------------------------------------------------------------


def pick_model(mb: float) -> ModelShape:
    """A model whose fp32 step plus bf16 step come to about ``mb`` MB."""
    big = ModelShape(hidden=768, intermediate=2048, layers=1, vocab=8192)
    small = ModelShape(hidden=256, intermediate=688, layers=1, vocab=4096)
    for base in (big, small):
        per_layer = sum(np.prod(s) for _, s in base.modules()) - _fixed(base)
        layers = round((mb * 1e6 / 6 - _fixed(base)) / per_layer)  # 4 + 2 bytes per parameter
        if layers >= 1:
            return ModelShape(base.hidden, base.intermediate, layers, base.vocab)
    return ModelShape(small.hidden, small.intermediate, 1, small.vocab)


def _fixed(m: ModelShape) -> int:
    return 2 * m.vocab * m.hidden + m.hidden  # embed, lm_head, final norm


def make_data(model: ModelShape, seed: int = 0) -> list[tuple[str, dict[str, np.ndarray]]]:
    """[(bucket name, {module: array})]: step 0 float32, step 1 bfloat16."""
    rng = np.random.default_rng(seed)
    out = []
    for step, dtype in enumerate(("float32", "bfloat16")):
        layout = ddp_buckets(model.modules(), dtypes.to_numpy(dtype).itemsize, BUCKET_BYTES)
        for b, members in enumerate(layout):
            tensors = {name: gradient(rng, shape, dtype, 1e-3 if "norm" in name else 1e-4)
                       for name, shape in members}
            out.append((f"R_0_E_0_S_{step}_B_{b}", tensors))
    return out


def torch_view(arr: np.ndarray):
    import torch

    if arr.dtype == dtypes.to_numpy("bfloat16"):
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def as_bytes(x) -> np.ndarray:
    """The bytes of a numpy array or torch tensor as a flat uint8 array (no copy)."""
    if not isinstance(x, np.ndarray):
        import torch

        x = x.contiguous().view(torch.uint8).numpy()
    return x.reshape(-1).view(np.uint8)


def consume(x) -> int:
    """Read every byte: a uint64 sum over the bytes (one fast reduction, shared by all)."""
    b = as_bytes(x)
    n8 = len(b) // 8 * 8
    return int(b[:n8].view(np.uint64).sum(dtype=np.uint64)) + int(b[n8:].sum())


# -- contenders ---------------------------------------------------------------------------------


class Contender:
    name = ""

    def __init__(self, root: Path, data):
        self.root = root
        self.data = data
        self.files: list[Path] = []

    def prepare(self) -> None:
        """Untimed set-up before the write (gradstore: creating the empty store)."""

    def write(self):  # -> state for sync()
        raise NotImplementedError

    def sync(self, state) -> None:
        for f in self.files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(self.root)

    def open_for_reading(self) -> None:
        pass

    def get(self, bucket: str, module: str):
        raise NotImplementedError

    def read_all(self) -> int:
        return sum(consume(self.get(b, m)) for b, tensors in self.data for m in tensors)

    def close(self) -> None:
        pass



class GradstoreC(Contender):
    name = "gradstore"

    def prepare(self) -> None:
        t = time.perf_counter()
        self.gs = gradstore.open(self.root / "run.gs", "w")
        self.create_s = time.perf_counter() - t

    def write(self):
        for bucket, tensors in self.data:
            self.gs.write_bucket(bucket, tensors)
        return self.gs

    def sync(self, gs) -> None:
        gs.close()  # fsyncs segments, log and directory

    def open_for_reading(self) -> None:
        self.gs = gradstore.open(self.root / "run.gs", "r")
        self.files = [p for p in (self.root / "run.gs").rglob("*") if p.is_file()]

    def get(self, bucket, module):
        return self.gs[f"{bucket}/{module}"]

    def close(self) -> None:
        self.gs.close()


class FilePerBucket(Contender):
    """Today's practice: one file per bucket, written by ``save(tensors, path)``."""

    suffix = ""

    def __init__(self, root, data):
        super().__init__(root, data)
        self.tensors = [(b, {m: torch_view(a) for m, a in t.items()}) for b, t in data]

    def save(self, tensors, path) -> None:
        raise NotImplementedError

    def path(self, bucket: str) -> Path:
        return self.root / f"{bucket}{self.suffix}"

    def write(self):
        self.files = []
        for bucket, tensors in self.tensors:
            self.save(tensors, self.path(bucket))
            self.files.append(self.path(bucket))


class TorchSave(FilePerBucket):
    name = "torch.save"
    suffix = ".pt"

    def save(self, tensors, path) -> None:
        import torch

        torch.save(tensors, path)

    def get(self, bucket, module):
        import torch

        return torch.load(self.path(bucket), weights_only=True)[module]

    def read_all(self) -> int:
        import torch

        total = 0
        for bucket, _ in self.data:
            for t in torch.load(self.path(bucket), weights_only=True).values():
                total += consume(t)
        return total


def h5_name(bucket: str, module: str) -> str:
    head, b = bucket.rsplit("_B_", 1)
    return f"/{head}/B_{b}/{module}"


class H5(Contender):
    name = "h5py"

    def write(self):
        import h5py

        path = self.root / "run.h5"
        self.files = [path]
        bf16 = dtypes.to_numpy("bfloat16")
        with h5py.File(path, "w") as f:
            for bucket, tensors in self.data:
                for module, arr in tensors.items():
                    f.create_dataset(h5_name(bucket, module),
                                     data=arr.view(np.uint16) if arr.dtype == bf16 else arr)

    def open_for_reading(self) -> None:
        import h5py

        self.f = h5py.File(self.root / "run.h5", "r")

    def get(self, bucket, module):
        return self.f[h5_name(bucket, module)][()]

    def close(self) -> None:
        self.f.close()


class Safetensors(FilePerBucket):
    name = "safetensors"
    suffix = ".safetensors"

    def save(self, tensors, path) -> None:
        from safetensors.torch import save_file

        save_file(tensors, path)

    def get(self, bucket, module):
        from safetensors import safe_open

        with safe_open(self.path(bucket), framework="pt") as f:
            return f.get_tensor(module)

    def read_all(self) -> int:
        from safetensors import safe_open

        total = 0
        for bucket, tensors in self.data:
            with safe_open(self.path(bucket), framework="pt") as f:
                for module in tensors:
                    total += consume(f.get_tensor(module))
        return total


class PlainWrite(Contender):
    name = "f.write"

    def write(self):
        path = self.root / "plain.bin"
        self.files = [path]
        self.where = {}
        pos = 0
        with open(path, "wb", buffering=0) as f:
            for bucket, tensors in self.data:
                for module, arr in tensors.items():
                    view = as_bytes(arr)
                    f.write(view)
                    self.where[(bucket, module)] = (pos, view.nbytes)
                    pos += view.nbytes

    def open_for_reading(self) -> None:
        self.fd = os.open(self.root / "plain.bin", os.O_RDONLY)

    def get(self, bucket, module):
        pos, n = self.where[(bucket, module)]
        buf = np.empty(n, np.uint8)
        os.preadv(self.fd, [buf], pos)
        return buf

    def close(self) -> None:
        os.close(self.fd)


# -- measuring ----------------------------------------------------------------------------------


def warm(files) -> None:
    """Read every file once so reads start from a warm page cache."""
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(16 << 20):
                pass


def per_call(fn, args_list, reps: int = 1) -> float:
    """Median seconds of one call over ``args_list`` (each repeated ``reps`` times)."""
    times = []
    for args in args_list:
        for _ in range(reps):
            t = time.perf_counter_ns()
            fn(*args)
            times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1e9


def build_key_store(path: Path, nkeys: int) -> float:
    """A store of ``nkeys`` tiny tensors through the public API; returns keys per second."""
    tiny = np.arange(4, dtype=np.float32)
    per_bucket = 100
    t = time.perf_counter()
    with gradstore.open(path, "w") as gs:
        for i in range(0, nkeys, per_bucket):
            step, bucket = divmod(i // per_bucket, 10)
            gs.write_bucket(f"R_0_E_0_S_{step}_B_{bucket}",
                            {f"model.layers.{m // 10}.mlp.p{m % 10}.weight": tiny
                             for m in range(min(per_bucket, nkeys - i))})
    return nkeys / (time.perf_counter() - t)


def get_latency(paths: list[Path], samples: int = 20000, block: int = 500,
                seed: int = 1) -> list[tuple[float, float]]:
    """(median, p99) seconds of ``gs[key]`` for random keys of each open store.

    The stores are measured side by side: blocks of ``block`` gets take turns
    between them, so a slow phase of the machine hits all of them alike.
    """
    with contextlib.ExitStack() as opened:
        stores = [opened.enter_context(gradstore.open(p, "r")) for p in paths]
        picks = []
        for gs in stores:
            picks.append(random.Random(seed).choices(gs.keys(), k=samples))
            for k in picks[-1][:1000]:  # warm the maps
                gs[k]
        times: list[list[int]] = [[] for _ in stores]
        clock = time.perf_counter_ns
        for b in range(0, samples, block):
            for gs, pick, out in zip(stores, picks, times):
                for k in pick[b:b + block]:
                    t = clock()
                    gs[k]
                    out.append(clock() - t)
    for t in times:
        t.sort()
    return [(statistics.median(t) / 1e9, t[int(len(t) * 0.99)] / 1e9) for t in times]


def open_time(path: Path, mode: str, reps: int) -> float:
    times = []
    for _ in range(reps + 1):
        gc.collect()
        t = time.perf_counter()
        gs = gradstore.open(path, mode)
        times.append(time.perf_counter() - t)
        n = len(gs)
        gs.close()
    assert n > 0
    return statistics.median(times[1:])  # the first one warms the page cache


# -- report ----------------------------------------------------------------------------------


def fmt_rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:,.0f} MB/s"


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:,.1f} µs"
    if s < 1:
        return f"{s * 1e3:,.1f} ms"
    return f"{s:,.2f} s"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) if i < len(r) - 2 else c.ljust(w)
                        for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=300, help="data size in MB (default 300)")
    ap.add_argument("--keys", type=int, default=1_000_000, help="keys of the big key-count store")
    ap.add_argument("--small-keys", type=int, default=1000, help="keys of the small key-count store")
    ap.add_argument("--dir", default=None, help="parent of the scratch directory (default: /tmp)")
    ap.add_argument("--repeat", type=int, default=5, help="write rounds (best counts)")
    ap.add_argument("--quick", action="store_true", help="smoke run: --mb 24 --keys 20000 --repeat 2")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)
    if args.quick:
        args.mb, args.keys, args.repeat = min(args.mb, 24), min(args.keys, 20_000), 2

    work = Path(tempfile.mkdtemp(prefix="bench_io-", dir=args.dir))
    try:
        run(args, work)
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    import h5py
    import safetensors
    import torch

    model = pick_model(args.mb)
    t = time.perf_counter()
    data = make_data(model)
    gen_s = time.perf_counter() - t
    nbytes = sum(a.nbytes for _, ts in data for a in ts.values())
    ntensors = sum(len(ts) for _, ts in data)
    print(f"gradstore {gradstore.__version__} bench_io: {nbytes / 1e6:,.0f} MB, {ntensors} tensors "
          f"in {len(data)} buckets (<= 25 MiB, DDP order), step 0 float32 + step 1 bfloat16;")
    print(f"  model hidden={model.hidden} intermediate={model.intermediate} layers={model.layers} "
          f"vocab={model.vocab} (made in {gen_s:.1f} s)")
    print(f"  python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
          f"h5py {h5py.__version__}, safetensors {safetensors.__version__}, {os.cpu_count()} CPUs")
    fs = os.statvfs(work)
    print(f"  scratch dir {work} ({fs.f_bavail * fs.f_frsize / 1e9:,.0f} GB free); "
          f"best of {args.repeat} write rounds; reads from a warm page cache")
    print("  h5py has no bfloat16: bf16 tensors are stored as their uint16 bit pattern (same bytes)")
    print()

    classes = [GradstoreC, TorchSave, H5, Safetensors, PlainWrite]
    write_nosync = {c.name: float("inf") for c in classes}
    write_sync = {c.name: float("inf") for c in classes}
    creating: dict[str, float] = {}
    last: dict[str, Contender] = {}
    for rnd in range(args.repeat):  # rounds interleave the contenders, so load noise hits all
        for cls in classes:
            root = work / cls.name
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            c = cls(root, data)
            c.prepare()
            os.sync()  # nothing dirty left from the previous contender
            gc.collect()
            t0 = time.perf_counter()
            state = c.write()
            t1 = time.perf_counter()
            c.sync(state)
            t2 = time.perf_counter()
            write_nosync[cls.name] = min(write_nosync[cls.name], t1 - t0)
            write_sync[cls.name] = min(write_sync[cls.name], t2 - t0)
            if hasattr(c, "create_s"):
                creating[cls.name] = min(creating.get(cls.name, float("inf")), c.create_s)
            last[cls.name] = c
    contenders = [last[c.name] for c in classes]
    for c in contenders:
        print(f"  wrote {c.name:12s} {fmt_rate(nbytes, write_nosync[c.name]):>12s} (no fsync) "
              f"{fmt_rate(nbytes, write_sync[c.name]):>12s} (fsync at end)", flush=True)

    # Reads: warm cache, same keys for everyone.
    all_keys = [(b, m) for b, ts in data for m in ts]
    rng = random.Random(0)
    sample = rng.sample(all_keys, min(64, len(all_keys)))
    few = sample[:8]
    get_s: dict[str, float] = {}
    read_s: dict[str, float] = {}
    for c in contenders:
        c.open_for_reading()
        warm(c.files)
        for b, m in sample[:4]:  # and warm the handles
            c.get(b, m)
        if c.name == "f.write":
            get_s[c.name] = float("nan")
        elif c.name == "torch.save":
            get_s[c.name] = per_call(c.get, few)
        elif c.name == "gradstore":
            get_s[c.name] = per_call(c.get, sample, reps=50)
        else:
            get_s[c.name] = per_call(c.get, sample, reps=3)
        times = []
        for _ in range(3):
            gc.collect()
            t = time.perf_counter()
            c.read_all()
            times.append(time.perf_counter() - t)
        read_s[c.name] = min(times)
        got = fmt_time(get_s[c.name]) if c.name != "f.write" else "-"
        print(f"  read {c.name:12s} get {got:>10s}  full read {fmt_rate(nbytes, read_s[c.name]):>12s}",
              flush=True)

    # gradstore extras: get with checksum, torch view
    gs = contenders[0].gs
    get_verify = per_call(lambda b, m: gs.read(f"{b}/{m}", verify=True), sample, reps=3)
    t = time.perf_counter()
    for b, m in all_keys:
        gs.read(f"{b}/{m}", verify=True)
    verify_read = time.perf_counter() - t
    for c in contenders:
        c.close()

    # Key count: open() and get latency, 1M keys vs 1k keys.
    print(f"  building a {args.keys:,}-key store of tiny tensors ...", flush=True)
    big = work / "keys-big.gs"
    small = work / "keys-small.gs"
    small_snap = work / "keys-small-snapshot.gs"
    rate_big = build_key_store(big, args.keys)
    build_key_store(small, args.small_keys)
    build_key_store(small_snap, args.small_keys)
    gradstore.repair(small_snap)  # its index now comes from a snapshot, as the big store's does
    open_r = open_time(big, "r", 5)
    open_a = open_time(big, "a", 3)
    (get_big, p99_big), (get_small, p99_small), (get_small_snap, _) = \
        get_latency([big, small, small_snap])
    print(f"  built at {rate_big:,.0f} keys/s; open('r') {fmt_time(open_r)}, open('a') {fmt_time(open_a)}")
    print()

    plain_w, plain_s = write_nosync["f.write"], write_sync["f.write"]
    names = list(CONTENDERS)
    rows = [["measurement", *names, "target", "verdict"]]

    def row(label, values, target="", ok=None):
        rows.append([label, *values, target, "" if ok is None else verdict(ok)])

    row("create the empty store", [fmt_time(creating[n]) if n == "gradstore" else "in write"
                                   for n in names])
    row("write, no fsync", [fmt_rate(nbytes, write_nosync[n]) for n in names])
    row("  ratio to f.write", [f"{plain_w / write_nosync[n]:.2f}x" for n in names],
        ">= 0.90x", plain_w / write_nosync["gradstore"] >= 0.9)
    row("write, fsync at end", [fmt_rate(nbytes, write_sync[n]) for n in names])
    row("  ratio to f.write", [f"{plain_s / write_sync[n]:.2f}x" for n in names],
        ">= 0.90x", plain_s / write_sync["gradstore"] >= 0.9)
    row("get one tensor (median)", [fmt_time(get_s[n]) if n != "f.write" else "-" for n in names],
        "<= 50 µs", get_s["gradstore"] <= 50e-6)
    speedup = {n: get_s["torch.save"] / get_s[n] for n in names if n != "f.write"}
    row("  torch.load time / this", [f"{speedup[n]:,.0f}x" if n in speedup else "-" for n in names],
        ">= 100x", speedup["gradstore"] >= 100)
    row("full read, all bytes", [fmt_rate(nbytes, read_s[n]) for n in names],
        ">= h5py", read_s["gradstore"] <= read_s["h5py"])
    row("  ratio to h5py", [f"{read_s['h5py'] / read_s[n]:.2f}x" for n in names])
    blank = [""] * (len(names) - 1)
    row(f"open() of {args.keys:,}-key store", [fmt_time(open_r), *blank], "< 1 s", open_r < 1.0)
    row(f"get at {args.keys:,} keys (median)", [fmt_time(get_big), *blank])
    row(f"get at {args.small_keys:,} keys, index from log", [fmt_time(get_small), *blank])
    row("  ratio", [f"{get_big / get_small:.2f}x", *blank], "<= 1.5x", get_big / get_small <= 1.5)
    row(f"get at {args.small_keys:,} keys, from snapshot", [fmt_time(get_small_snap), *blank])
    row("  ratio", [f"{get_big / get_small_snap:.2f}x", *blank], "<= 1.5x",
        get_big / get_small_snap <= 1.5)
    print_table(rows)
    print()
    print("notes:")
    print(f"  get = gradstore gs[key] (zero-copy view of an open store); torch.load of the bucket file "
          f"({len(few)} keys); h5py f[path][()] of an open file; safetensors safe_open + get_tensor "
          f"(a file per bucket); the same {len(sample)} random keys")
    print("  full read = every tensor fetched as above, then a uint64 sum over its bytes; "
          "f.write row reads with preadv into a fresh array")
    print(f"  gradstore read(verify=True): median {fmt_time(get_verify)}; reading all {ntensors} "
          f"tensors with verify: {fmt_rate(nbytes, verify_read)}")
    print(f"  key stores: tensors of 4 float32, 100 per write_bucket; p99 get {fmt_time(p99_big)} at "
          f"{args.keys:,} keys, {fmt_time(p99_small)} at {args.small_keys:,}; "
          f"open('a') (writer, with recovery) {fmt_time(open_a)}")


if __name__ == "__main__":
    main()
