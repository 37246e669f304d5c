"""Analysis at scale on real gradients: `gradstore report` end to end, side by side in one run.

    python tools/bench_report.py [GRADS_DIR] [--repeat 3] [--scale 16] [--grow 10]

GRADS_DIR holds fp32.gs (and bf16.gs) from tools/make_grads.py, real buckets
captured from a DDP run of a small transformers model; without it one is
captured into a temporary directory first (about 20 s).

What it measures, on the same bytes, every figure next to its target:
  * `gradstore report --codec SPEC -j 1 --fresh` as a user runs it (a new
    process: start-up, reading, encoding, decoding to check, error metrics,
    accounting) in MB/s of raw tensor bytes, for eg:k=0 and k=auto,remap=rank:
    on the captured store (also with the start-up, a report of one key, taken
    out), and, against the targets, at scale: on the same buckets written
    --scale times over, start-up included;
  * the original pure-Python coder (tools/eg_reference.py) on a sample of
    the same tensors, and gradstore's speed-up over it;
  * eg encode alone and decode alone, in this process, per key;
  * -j 2 against -j 1, end to end at scale, and past the start-up: the
    time the store's --scale - 1 more copies cost each (a run of either
    size pays the same start-up, a second or two here, which at a few
    seconds of work would hide how the work itself scales); in --repeat
    rounds, each timing both job counts back to back, medians and ranges
    printed;
  * peak RSS of a report as the store grows --grow times (the same tensors
    written again under other epochs);
  * the old job, 14,000 buckets of 25 MB on 16 cores, projected from the
    per-core rate and the -j 2 scaling measured past the start-up, plus one
    start-up.
Times are the best of --repeat runs (this machine is shared and noisy);
the spread is printed next to each.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
K0 = "eg:k=0,scale=1e6,sign=bit"
AUTO = "eg:k=auto,scale=1e6,sign=bit,remap=rank"
OLD_JOB_BYTES = 14_000 * 25e6
OLD_JOB_CORES = 16

sys.path.insert(0, HERE)


def timed_report(store: str, specs: list[str], jobs: int, results: str, extra=()) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB, the largest process of the tree) of one CLI report."""
    cmd = [sys.executable, "-c", _RUNNER, sys.executable, "-m", "gradstore", "report", store,
           *(a for s in specs for a in ("--codec", s)), "-j", str(jobs),
           "--results", results, "--fresh", "--group-by", "rank", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"report failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    wall, rss = out.stdout.strip().splitlines()[-1].split()
    return float(wall), int(rss)


# the report in a child of a small runner, so that RUSAGE_CHILDREN is this report's alone
_RUNNER = """
import resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
if p.returncode:
    sys.stderr.write(p.stderr); sys.exit(p.returncode)
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def best(fn, repeat: int) -> tuple[float, float, object]:
    """(best, worst, last result) of ``repeat`` calls of fn() -> (seconds, result)."""
    times, res = [], None
    for _ in range(repeat):
        t, res = fn()
        times.append(t)
    return min(times), max(times), res


def raw_bytes(store: str) -> int:
    import gradstore
    with gradstore.open(store) as gs:
        return sum(gs.entry(k).payload_len for k in gs.keys())


def codec_speeds(store: str, spec: str, repeat: int) -> dict:
    """eg encode alone and decode alone over every key, in this process (MB/s)."""
    import gradstore
    from gradstore.codecs.registry import get_codec
    codec = get_codec(spec)
    out = {}
    with gradstore.open(store) as gs:
        arrays = [gs[k] for k in gs.keys()]
        codec.encode(arrays[0])                        # load the kernels first
        total = sum(a.nbytes for a in arrays)
        dense = [a for a in arrays if a.size >= 1_000_000]

        def enc(arrs):
            t = time.perf_counter()
            payloads = [codec.encode(a).payload for a in arrs]
            return time.perf_counter() - t, payloads

        def dec(payloads, arrs):
            t = time.perf_counter()
            for p, a in zip(payloads, arrs):
                codec.decode(p, a.dtype, a.shape)
            return time.perf_counter() - t, None

        lo, hi, payloads = best(lambda: enc(arrays), repeat)
        out["encode"] = (total / lo / 1e6, total / hi / 1e6)
        lo, hi, _ = best(lambda: dec(payloads, arrays), repeat)
        out["decode"] = (total / lo / 1e6, total / hi / 1e6)
        if dense:
            dbytes = sum(a.nbytes for a in dense)
            lo, hi, _ = best(lambda: enc(dense), repeat)
            out["encode_dense"] = (dbytes / lo / 1e6, dbytes / hi / 1e6, len(dense), dense[0].size)
    return out


def reference_speed(store: str, sample: int, seed: int = 0) -> tuple[float, int]:
    """MB/s of the original pure-Python coder on ``sample`` elements drawn from every key."""
    import eg_reference
    import gradstore
    rng = np.random.default_rng(seed)
    with gradstore.open(store) as gs:
        keys = gs.keys()
        per = max(1, sample // len(keys))
        itemsize = gs[keys[0]].dtype.itemsize      # MB/s of the store's bytes: same elements, same bytes
        parts = [np.asarray(gs[k], dtype=np.float32).reshape(-1) for k in keys]
    values = np.concatenate([p[rng.integers(0, p.size, min(per, p.size))] for p in parts])
    t = time.perf_counter()                       # the original took a tensor: tolist() included
    eg_reference.count_bits(values.astype(np.float64).tolist(), 1e6)
    dt = time.perf_counter() - t
    return values.size * itemsize / dt / 1e6, values.size


def grown(src: str, dst: str, times: int) -> None:
    """dst: every bucket of src written ``times`` times, under epochs 0..times-1."""
    import gradstore
    from gradstore.keys import bucket_name, parse_bucket
    with gradstore.open(src) as gs, gradstore.open(dst, "w") as out:
        for e in range(times):
            for name in gs.buckets():
                k = parse_bucket(name)
                out.write_bucket(bucket_name(k.rank, e, k.step, k.bucket), gs.bucket(name))


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grads", nargs="?", help="directory from tools/make_grads.py (default: capture one)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per timing, best kept (default 3)")
    ap.add_argument("--grow", type=int, default=10, help="store growth for the RSS check (default 10)")
    ap.add_argument("--scale", type=int, default=16,
                    help="the store written this many times over for the timings at scale (default 16)")
    ap.add_argument("--ref-sample", type=int, default=300_000, help="elements given to the reference")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_report.") as tmp:
        grads = args.grads
        if grads is None:
            grads = os.path.join(tmp, "grads")
            print("capturing real gradients (tools/make_grads.py) ...", flush=True)
            subprocess.run([sys.executable, os.path.join(HERE, "make_grads.py"), grads], check=True)
        results = os.path.join(tmp, "results")
        rows = []
        for name in ("fp32.gs", "bf16.gs"):
            store = os.path.join(grads, name)
            if not os.path.isdir(store):
                continue
            nbytes = raw_bytes(store)
            mb = nbytes / 1e6
            print(f"\n== {name}: {mb:.1f} MB of real gradients", flush=True)
            start, small = {}, {}
            for spec in (K0, AUTO):
                # start-up: the same command over one key (process, imports, kernels)
                lo, _, _ = best(lambda: timed_report(store, [spec], 1, results,
                                                     ("--step", "0", "--rank", "0",
                                                      "--module", "model.norm.weight")), args.repeat)
                start[spec] = lo
                lo, hi, _ = best(lambda: timed_report(store, [spec], 1, results), args.repeat)
                small[spec] = lo
                print(f"report -j 1 {spec} on this {mb:.0f} MB store: {mb / lo:.1f} MB/s end to end "
                      f"(worst {mb / hi:.1f}), {mb / max(lo - start[spec], 1e-9):.1f} MB/s "
                      f"without the {start[spec]:.2f} s start-up", flush=True)
            # at scale: the same buckets written --scale times (other epochs), start-up included
            big = os.path.join(tmp, "scaled.gs")
            grown(store, big, args.scale)
            bmb = mb * args.scale
            rate = {}
            for spec in (K0, AUTO):
                lo, hi, _ = best(lambda: timed_report(big, [spec], 1, results), args.repeat)
                rate[spec] = bmb / lo
                target = 150 if spec == K0 else 100
                print(f"report -j 1 {spec} on {bmb:.0f} MB ({args.scale}x): {bmb / lo:.1f} MB/s end to "
                      f"end (worst {bmb / hi:.1f}); target >= {target}: {verdict(bmb / lo >= target)}",
                      flush=True)
                rows.append((name, spec, bmb / lo, mb / small[spec]))
            ref, n = reference_speed(store, args.ref_sample)
            print(f"pure-Python original coder: {ref:.3f} MB/s ({n} elements sampled from every key, "
                  f"tolist() included); gradstore report -j 1 is {rate[K0] / ref:.0f}x faster end to end "
                  f"at scale ({mb / small[K0] / ref:.0f}x on the small store); target >= 30x: "
                  f"{verdict(rate[K0] / ref >= 30)}", flush=True)
            for spec in (K0, AUTO):
                s = codec_speeds(store, spec, args.repeat)
                print(f"{spec}: encode {s['encode'][0]:.0f} MB/s (worst {s['encode'][1]:.0f}; target >= 500: "
                      f"{verdict(s['encode'][0] >= 500)}), decode {s['decode'][0]:.0f} MB/s (worst "
                      f"{s['decode'][1]:.0f}; target >= 400: {verdict(s['decode'][0] >= 400)})", flush=True)
                if "encode_dense" in s:
                    r, w, count, size = s["encode_dense"]
                    print(f"  dense large tensors ({count} of >= 1M elements): encode {r:.0f} MB/s "
                          f"(worst {w:.0f}); target >= 1000: {verdict(r >= 1000)}", flush=True)
            # -j 2 against -j 1 on the store and on it written --scale times over, in rounds
            # (both job counts back to back, order alternating: the machine's speed drifts
            # between rounds), end to end and past the start-up: the time the extra bytes
            # cost, the start-up cancelled out
            rounds = []
            for r in range(args.repeat):
                t = {}
                for jobs in ((1, 2) if r % 2 == 0 else (2, 1)):
                    t[("big", jobs)] = timed_report(big, [K0], jobs, results)[0]
                    t[("small", jobs)] = timed_report(store, [K0], jobs, results)[0]
                rounds.append(t)
            end = [t[("big", 1)] / t[("big", 2)] for t in rounds]
            past = [(t[("big", 1)] - t[("small", 1)]) / max(t[("big", 2)] - t[("small", 2)], 1e-9)
                    for t in rounds]
            extra = bmb - mb
            cost1 = float(np.median([t[("big", 1)] - t[("small", 1)] for t in rounds]))
            s2 = float(np.median([t[("small", 2)] for t in rounds]))
            scaling, marginal = float(np.median(end)), float(np.median(past))
            print(f"-j 2 vs -j 1 ({K0}, {args.repeat} rounds, median and range): end to end on {bmb:.0f} MB "
                  f"{scaling:.2f}x ({min(end):.2f}-{max(end):.2f}); target >= 1.7x: {verdict(scaling >= 1.7)}",
                  flush=True)
            print(f"  past the start-up (what the {extra:.0f} MB more than the store cost each): {marginal:.2f}x "
                  f"({min(past):.2f}-{max(past):.2f}); target >= 1.7x: {verdict(marginal >= 1.7)}; -j 1 at "
                  f"{extra / cost1:.0f} MB/s per core there", flush=True)
            subprocess.run(["rm", "-rf", big], check=True)
            per_core = extra / cost1
            efficiency = min(1.0, marginal / 2)
            seconds = s2 + OLD_JOB_BYTES / 1e6 / (per_core * OLD_JOB_CORES * efficiency)
            print(f"old job projected: 14,000 buckets x 25 MB on {OLD_JOB_CORES} cores at {per_core:.0f} "
                  f"MB/s per core past start-up and the -j 2 efficiency there {efficiency:.0%}, plus a "
                  f"{s2:.1f} s start: {seconds / 60:.1f} min (the original took 5 h); target <= 5 min: "
                  f"{verdict(seconds <= 300)}", flush=True)
            if name == "fp32.gs":
                big = os.path.join(tmp, "grown.gs")
                small = os.path.join(tmp, "small.gs")
                grown(store, small, 1)
                grown(store, big, args.grow)
                _, rss1 = timed_report(small, [K0], 2, results)
                _, rssn = timed_report(big, [K0], 2, results)
                print(f"peak RSS, report -j 2: {rss1 / 1024:.0f} MiB on {mb:.0f} MB, {rssn / 1024:.0f} MiB on "
                      f"{mb * args.grow:.0f} MB ({args.grow}x): {rssn / rss1:.2f}x; target <= 1.5x: "
                      f"{verdict(rssn / rss1 <= 1.5)}", flush=True)
                for p in (big, small):
                    subprocess.run(["rm", "-rf", p], check=True)


if __name__ == "__main__":
    main()
