"""Benchmark the lossless codecs on real gradient buckets, fp32 and bf16 side by side, one run.

    python tools/make_grads.py grads/                 # once: real captured buckets
    python tools/bench_lossless.py grads/             # ~1-2 minutes on 2 cores
    python tools/bench_lossless.py grads/ --repeat 3 --max-mb 64

Contenders, each over every tensor of the stores (as ``gs.encode`` codes
them, one payload per key): raw, zstd -3, zlib -6, zipnn (when installed,
with its round-trip result) and fpx.  Bounds: the order-0 entropy of the
exponent field with sign and mantissa raw (one model per store, and one per
tensor), of whole bf16 values per tensor, and of the model fpx uses (its
symbols per chunk, plus its raw bits).  Per contender: size as a fraction of
raw, encode and decode MB/s of raw bytes on one core (best of --repeat
passes over all tensors) and whether every payload decoded to the very input
bytes.  The same columns follow for the sparse tensors (> 90% zeros) and
for the dense ones (< 10% zeros) of the stores.  Targets are checked at the end; nothing is asserted, numbers are
printed as measured.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradstore  # noqa: E402
from gradstore.codecs import get_codec  # noqa: E402
from gradstore.codecs.stats import entropy_bits  # noqa: E402
from gradstore.errors import CodecError  # noqa: E402

CONTENDERS = ["raw", "zstd:level=3", "zlib:level=6", "zipnn", "fpx"]
EXPONENT_BITS = {2: 5, 4: 8, 8: 11}   # itemsize -> exponent bits (bf16 handled apart)


def exponent_field(x: np.ndarray) -> tuple[np.ndarray, int]:
    """The exponent field of each value and the number of bits stored raw beside it."""
    w = x.dtype.itemsize * 8
    e = 8 if x.dtype.name == "bfloat16" else EXPONENT_BITS[x.dtype.itemsize]
    u = x.reshape(-1).view(f"<u{x.dtype.itemsize}").astype(np.int64)
    return (u >> (w - 1 - e)) & ((1 << e) - 1), w - e


def bounds(tensors: list[np.ndarray]) -> dict[str, float]:
    """Order-0 bounds in bytes: exponent per store and per tensor, whole values per tensor (16-bit)."""
    glob = np.zeros(1 << 11, dtype=np.int64)
    raw_bits = per_tensor = whole = 0.0
    for x in tensors:
        e, rest = exponent_field(x)
        counts = np.bincount(e, minlength=glob.size)
        glob += counts
        raw_bits += rest * x.size
        per_tensor += entropy_bits(counts) + rest * x.size
        if x.dtype.itemsize == 2:
            whole += entropy_bits(np.bincount(x.reshape(-1).view(np.uint16)))
    out = {"exponent order-0, one model": (entropy_bits(glob) + raw_bits) / 8,
           "exponent order-0, per tensor": per_tensor / 8}
    if tensors and tensors[0].dtype.itemsize == 2:
        out["whole values order-0, per tensor"] = whole / 8
    return out


def run(spec: str, tensors: list[np.ndarray], repeat: int) -> dict:
    """Size, best encode and decode time over all tensors, and the round-trip verdict."""
    try:
        codec = get_codec(spec)
    except CodecError as exc:
        return {"error": str(exc)}
    enc_best = dec_best = float("inf")
    payloads, entropy, failed = [], 0.0, 0
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            encoded = [codec.encode(x) for x in tensors]
            enc_best = min(enc_best, time.perf_counter() - start)
            payloads = [e.payload for e in encoded]
            start = time.perf_counter()
            decoded = [codec.decode(p, x.dtype, x.shape) for p, x in zip(payloads, tensors)]
            dec_best = min(dec_best, time.perf_counter() - start)
    except CodecError as exc:
        return {"error": str(exc)}
    failed = sum(d.tobytes() != x.tobytes() for d, x in zip(decoded, tensors))
    if all(e.entropy_bits is not None for e in encoded):
        entropy = sum(e.entropy_bits for e in encoded) / 8
    return {"bytes": sum(len(p) for p in payloads), "enc": enc_best, "dec": dec_best,
            "failed": failed, "entropy": entropy or None}


def load(path: Path, max_mb: float) -> list[np.ndarray]:
    """Every tensor of a store, in key order, up to max_mb of raw bytes."""
    tensors, total = [], 0
    with gradstore.open(path, "r") as gs:
        for key in sorted(gs.keys()):
            x = np.array(gs[key])
            if total + x.nbytes > max_mb * 2**20 and tensors:
                break
            tensors.append(x)
            total += x.nbytes
    return tensors


def table(title: str, sets: dict[str, list[np.ndarray]], repeat: int) -> dict:
    """Print one block of rows (contenders, then bounds), the sets as column groups."""
    results = {name: {spec: run(spec, ts, repeat) for spec in CONTENDERS} for name, ts in sets.items()}
    raw = {name: sum(x.nbytes for x in ts) for name, ts in sets.items()}
    print(f"\n{title}")
    head = f"{'':42s}" + "".join(f"| {name} ({raw[name] / 2**20:.0f} MiB, {len(sets[name])} tensors)".ljust(45)
                                 for name in sets)
    print(head)
    print(f"{'':42s}" + "| size/raw  enc MB/s  dec MB/s  round trip  " * len(sets))
    for spec in CONTENDERS:
        line = f"{spec:42s}"
        for name in sets:
            r = results[name][spec]
            if "error" in r:
                line += f"| {r['error'][:42]:43s}"
                continue
            mb = raw[name] / 1e6
            ok = "ok" if not r["failed"] else f"FAILS {r['failed']}"
            line += (f"| {r['bytes'] / raw[name]:8.4f} {mb / r['enc']:9.0f} {mb / r['dec']:9.0f}"
                     f"  {ok:10s}  ")
        print(line)
    rows = {}
    for name, ts in sets.items():
        for label, size in bounds(ts).items():
            rows.setdefault(label, {})[name] = size
        r = results[name]["fpx"]
        if r.get("entropy"):
            rows.setdefault("fpx model order-0 (per chunk)", {})[name] = r["entropy"]
    for label, by_set in rows.items():
        line = f"{'bound: ' + label:42s}"
        for name in sets:
            line += f"| {by_set[name] / raw[name]:8.4f}".ljust(45) if name in by_set else "| -".ljust(45)
        print(line)
    return {"results": results, "raw": raw}


def check_targets(dense: dict, sparse: dict, dense_only: dict) -> None:
    print("\ntargets (issue 15)")
    limits = {"fp32": 0.80, "bf16": 0.66}

    def say(ok: bool, text: str) -> None:
        print(f"  [{'met ' if ok else 'MISS'}] {text}")

    for name, raw in dense["raw"].items():
        res = dense["results"][name]
        fpx = res["fpx"]
        if "error" in fpx:
            say(False, f"{name}: fpx failed: {fpx['error']}")
            continue
        ratio = fpx["bytes"] / raw
        say(ratio <= limits[name], f"{name}: fpx size {ratio:.4f} of raw <= {limits[name]}")
        others = {s: r["bytes"] for s, r in res.items()
                  if s != "fpx" and "error" not in r and not r["failed"]}
        say(all(fpx["bytes"] < b for b in others.values()),
            f"{name}: smaller than every contender that round-trips "
            f"(best other {min(others, key=others.get)}: {min(others.values()) / raw:.4f})")
        if fpx.get("entropy"):
            over = fpx["bytes"] / fpx["entropy"] - 1
            say(over <= 0.01, f"{name}: {100 * over:.2f}% over the order-0 bound of its model (<= 1%)")
        enc, dec = raw / 1e6 / fpx["enc"], raw / 1e6 / fpx["dec"]
        say(enc >= 500, f"{name}: encode {enc:.0f} MB/s per core >= 500")
        say(dec >= 1000, f"{name}: decode {dec:.0f} MB/s per core >= 1000")
    for name, raw in sparse["raw"].items():
        res = sparse["results"][name]
        if "error" in res["fpx"] or "error" in res["zstd:level=3"]:
            continue
        a, b = res["fpx"]["bytes"], res["zstd:level=3"]["bytes"]
        say(a <= b, f"{name} sparse: fpx {a / raw:.4f} of raw, zstd -3 {b / raw:.4f}")
    for name, raw in dense_only["raw"].items():    # the size targets on dense tensors alone
        fpx = dense_only["results"][name]["fpx"]
        if "error" not in fpx:
            say(fpx["bytes"] / raw <= limits[name],
                f"{name} dense tensors only: fpx {fpx['bytes'] / raw:.4f} of raw <= {limits[name]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grads", type=Path, help="directory made by tools/make_grads.py (fp32.gs, bf16.gs)")
    parser.add_argument("--repeat", type=int, default=2, help="passes per contender, best time kept")
    parser.add_argument("--max-mb", type=float, default=1e9, help="raw MiB read from each store")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    sets = {}
    for name in ("fp32", "bf16"):
        path = args.grads / f"{name}.gs"
        if not path.exists():
            parser.error(f"{path} not found: run tools/make_grads.py {args.grads} first")
        sets[name] = load(path, args.max_mb)
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} cores; "
          f"one thread per codec; best of {args.repeat}")
    for spec in ("fpx", "zstd"):   # compile / warm up outside the timings
        get_codec(spec).decode(get_codec(spec).encode(sets["fp32"][0]).payload,
                               sets["fp32"][0].dtype, sets["fp32"][0].shape)
    dense = table("all tensors (sizes summed over per-tensor payloads)", sets, args.repeat)
    sparse_sets = {name: [x for x in ts if x.size and np.count_nonzero(x) < 0.1 * x.size]
                   for name, ts in sets.items()}
    sparse = table("sparse tensors (> 90% zeros)", {n: ts for n, ts in sparse_sets.items() if ts},
                   args.repeat)
    dense_sets = {name: [x for x in ts if x.size and np.count_nonzero(x) > 0.9 * x.size]
                  for name, ts in sets.items()}
    dense_only = table("dense tensors (< 10% zeros), no embedding rows left at zero",
                       {n: ts for n, ts in dense_sets.items() if ts}, args.repeat)
    check_targets(dense, sparse, dense_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
