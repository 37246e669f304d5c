"""Benchmark the codecs on real captured gradients, key by key as a report goes, one run.

    python tools/bench_codecs.py grads/           # a directory made by tools/make_grads.py (fp32.gs, bf16.gs)
    python tools/bench_codecs.py                  # captures one into a temporary directory first (~20 s)
    python tools/bench_codecs.py grads/ --repeat 5 --ref-sample 50000 --max-keys 100

Datasets, from each store: every tensor (real buckets: a few large weights,
many small biases and norms), the dense large tensors alone (>= 1M
elements, < 10% zeros) and the sparse ones (> 90% zeros).  Contenders: the
original pure-Python coder (tools/eg_reference.py, on a sample of the same
values, for the speed ratio), gradstore eg with k=0/sign=bit (whose bit
count must equal the reference's), eg with k=auto and rank remap (with and
without zero runs), zlib and zstd over the raw bytes.  Per contender:
compression ratio (raw bytes / payload bytes), bits per element,
efficiency (order-0 entropy of each tensor's quantized values / bits
spent), encode and decode MB/s of raw input, and for eg "trial" MB/s:
variants.trial, what a size report does per key (encode, decode, check,
error metrics).  Speeds are on one core, best of --repeat passes over all
the tensors of a dataset (zlib and zstd: one pass).  Targets are checked at
the end; nothing here is asserted, the numbers are printed as measured.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradstore  # noqa: E402
from gradstore.codecs import get_codec  # noqa: E402
from gradstore.variants import trial  # noqa: E402

_spec = importlib.util.spec_from_file_location("eg_reference", Path(__file__).with_name("eg_reference.py"))
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

SCALE = 1e6
EG_ORIGINAL = "eg:k=0,scale=1e6,sign=bit"
EG_AUTO = "eg:k=auto,scale=1e6,remap=rank"
EG_RUNS = "eg:k=auto,scale=1e6,remap=rank,zeros=run"
EG = [EG_ORIGINAL, EG_AUTO, EG_RUNS]
CONTENDERS = EG + ["zlib:level=6", "zstd:level=3"]
ENCODE_TARGET, DECODE_TARGET, DENSE_ENCODE_TARGET = 500, 400, 1000        # MB/s per core, issue 14
REPORT_TARGETS = {EG_ORIGINAL: 150, EG_AUTO: 100}                         # `gradstore report` -j 1


# --- data ------------------------------------------------------------------------

def capture(directory: Path) -> None:
    """Real gradients into ``directory``, by tools/make_grads.py (a short DDP run)."""
    print("# capturing real gradients with tools/make_grads.py (about 20 s) ...", flush=True)
    subprocess.run([sys.executable, str(Path(__file__).with_name("make_grads.py")), str(directory)], check=True,
                   stdout=subprocess.DEVNULL)


def datasets(grads: Path, max_keys: int | None) -> list[tuple[str, list[np.ndarray]]]:
    """(label, tensors) of every store in ``grads``: all keys, dense large, sparse."""
    out = []
    for name in ("fp32", "bf16"):
        path = grads / f"{name}.gs"
        if not path.exists():
            continue
        gs = gradstore.open(path)
        keys = gs.keys()[:max_keys]
        tensors = [np.asarray(gs[k]) for k in keys]
        zeros = [float(np.count_nonzero(t == 0)) / max(t.size, 1) for t in tensors]
        dense = [t for t, z in zip(tensors, zeros) if t.size >= 1 << 20 and z < 0.1]
        sparse = [t for t, z in zip(tensors, zeros) if z > 0.9]
        out.append((f"{name}: all {len(tensors)} tensors", tensors))
        if dense:
            out.append((f"{name}: {len(dense)} dense large tensors (>= 1M elements, < 10% zeros)", dense))
        if sparse:
            out.append((f"{name}: {len(sparse)} sparse tensors (> 90% zeros)", sparse))
    return out


# --- measuring -------------------------------------------------------------------

@dataclass
class Row:
    name: str
    bits_per_element: float
    ratio: float
    efficiency: float | None
    encode_mbs: float | None
    decode_mbs: float | None
    trial_mbs: float | None = None
    note: str = ""


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def sample_of(tensors: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` values drawn from all the tensors (in their order), as float64 (exactly)."""
    flat = np.concatenate([t.reshape(-1).astype(np.float64) for t in tensors])
    return flat[np.sort(rng.choice(flat.size, size=min(size, flat.size), replace=False))]


def measure(tensors: list[np.ndarray], repeat: int, ref_sample: int, rng) -> tuple[list[Row], dict]:
    n = sum(t.size for t in tensors)
    raw_bytes = sum(t.nbytes for t in tensors)
    itemsize = tensors[0].itemsize
    facts = {"zeros": sum(int(np.count_nonzero(t == 0)) for t in tensors) / n, "mb": raw_bytes / 1e6, "n": n}
    rows = []

    # the original coder, on a sample of the same values (it is far too slow for all of them)
    sample = sample_of(tensors, ref_sample, rng)
    ref_time, ref_bits = best_time(lambda: reference.count_bits(sample.tolist(), SCALE), 1)
    facts["reference_match"] = get_codec(EG_ORIGINAL).encode(sample.astype(tensors[0].dtype)).nbits == ref_bits
    facts["reference_mbs"] = sample.size * itemsize / ref_time / 1e6
    rows.append(Row(f"reference (pure Python, {sample.size} sample)", ref_bits / sample.size,
                    8 * itemsize * sample.size / ref_bits, None, facts["reference_mbs"], None, None,
                    "bits only, no stream"))

    entropy = None
    for spec in CONTENDERS:
        codec = get_codec(spec)
        passes = repeat if spec in EG else 1
        enc_time, encoded = best_time(lambda: [codec.encode(t) for t in tensors], passes)
        dec_time, _ = best_time(lambda: [codec.decode(e.payload, t.dtype, t.shape)
                                         for e, t in zip(encoded, tensors)], passes)
        trial_mbs = None
        if spec in EG:
            trial_time, _ = best_time(lambda: [trial(codec, t) for t in tensors], passes)
            trial_mbs = raw_bytes / trial_time / 1e6
            if entropy is None:   # H0 of each tensor's quantized values: the same in every eg mode
                entropy = sum(e.entropy_bits for e in encoded)
        nbits = sum(e.nbits for e in encoded)
        payload = sum(len(e.payload) for e in encoded)
        orders = [e.info["k"] for e in encoded] if spec in EG else []
        note = "lossless" if codec.is_lossless(tensors[0].dtype) else \
            f"k={orders[0]}" if min(orders) == max(orders) else f"k={min(orders)}..{max(orders)}"
        rows.append(Row(spec, nbits / n, raw_bytes / payload, entropy / nbits if entropy and nbits else None,
                        raw_bytes / enc_time / 1e6, raw_bytes / dec_time / 1e6, trial_mbs, note))
        facts[spec] = rows[-1]
    facts["speed_ratio"] = facts[EG_ORIGINAL].encode_mbs / facts["reference_mbs"]
    facts["entropy_per_element"] = entropy / n
    return rows, facts


def show(label: str, tensors: list[np.ndarray], rows: list[Row], facts: dict) -> None:
    print(f"\n## {label}: {facts['n']:,} elements {tensors[0].dtype}, {facts['mb']:.1f} MB, "
          f"{facts['zeros']:.1%} zeros, H0(q) = {facts['entropy_per_element']:.3f} bits/element")
    print(f"{'contender':44s} {'ratio':>7s} {'bits/el':>8s} {'eff':>7s} {'enc MB/s':>9s} "
          f"{'dec MB/s':>9s} {'trial MB/s':>10s}  note")

    def num(v):
        return f"{v:.1f}" if v is not None else "-"
    for r in rows:
        eff = f"{r.efficiency:.1%}" if r.efficiency is not None else "-"
        print(f"{r.name:44s} {r.ratio:7.2f} {r.bits_per_element:8.3f} {eff:>7s} {num(r.encode_mbs):>9s} "
              f"{num(r.decode_mbs):>9s} {num(r.trial_mbs):>10s}  {r.note}")
    print(f"eg k=0 bits == reference bits on the sample: {'yes' if facts['reference_match'] else 'NO'}; "
          f"eg k=0 encode / reference: {facts['speed_ratio']:.0f}x")


def summary(results: list[tuple[str, list[np.ndarray], dict]]) -> None:
    print("\n## targets (issue 14, per core; ratio = measured / target)")

    def verdict(value: float, target: float) -> str:
        return f"{value:.0f} MB/s, {value / target:.2f}x of {target} -> {'met' if value >= target else 'NOT met'}"

    ratios = [f["speed_ratio"] for _, _, f in results]
    print(f"- >= 150x reference throughput (eg k=0 encode): min {min(ratios):.0f}x -> "
          f"{'met' if min(ratios) >= 150 else 'NOT met'}")
    match = all(f["reference_match"] for _, _, f in results)
    print(f"- eg k=0 sign=bit bit counts equal the reference on every sample -> {'met' if match else 'NOT met'}")
    for label, _, f in results:
        dense_large = "dense large" in label
        for spec in (EG_ORIGINAL, EG_AUTO):
            r = f[spec]
            target = DENSE_ENCODE_TARGET if dense_large else ENCODE_TARGET
            print(f"- {label}, {spec}: encode {verdict(r.encode_mbs, target)}; "
                  f"decode {verdict(r.decode_mbs, DECODE_TARGET)}")
            if label.split(": ")[1].startswith("all"):
                print(f"  trial (the codec's share of `gradstore report -j 1`, which also reads and "
                      f"records): {verdict(r.trial_mbs, REPORT_TARGETS[spec])}")
    for label, _, f in results:
        if "sparse" in label:
            zstd, runs, plain = f["zstd:level=3"], f[EG_RUNS], f[EG_AUTO]
            print(f"- {label}: eg zeros=run {runs.bits_per_element:.3f} bits/el, eg plain "
                  f"{plain.bits_per_element:.3f}, zstd {zstd.bits_per_element:.3f} "
                  f"-> eg {'beats' if runs.bits_per_element < zstd.bits_per_element else 'loses to'} zstd")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grads", type=Path, nargs="?",
                        help="directory made by tools/make_grads.py (default: capture one into a temporary directory)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per eg measurement, best kept")
    parser.add_argument("--ref-sample", type=int, default=100_000, help="values given to the reference")
    parser.add_argument("--max-keys", type=int, help="only the first keys of each store")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import numba
    print(f"# gradstore codec benchmark: python {platform.python_version()}, numpy {np.__version__}, "
          f"numba {numba.__version__}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"single thread, best of {args.repeat}, seed {args.seed}")
    with tempfile.TemporaryDirectory() as tmp:
        grads = args.grads
        if grads is None:
            grads = Path(tmp)
            capture(grads)
        elif not (grads / "fp32.gs").exists() and not (grads / "bf16.gs").exists():
            parser.error(f"{grads} holds no fp32.gs or bf16.gs: run tools/make_grads.py {grads} first")
        sets = datasets(grads, args.max_keys)
        for spec in CONTENDERS:  # compile (or load from cache) before timing
            for _, tensors in sets:
                trial(get_codec(spec), tensors[0])
        rng = np.random.default_rng(args.seed)
        results = []
        for label, tensors in sets:
            rows, facts = measure(tensors, args.repeat, args.ref_sample, rng)
            show(label, tensors, rows, facts)
            results.append((label, tensors, facts))
        summary(results)


if __name__ == "__main__":
    main()
