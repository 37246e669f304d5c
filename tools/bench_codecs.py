"""Benchmark the codecs: every contender on the same synthetic gradient buckets, one run.

    python tools/bench_codecs.py              # ~3M-element buckets, well under two minutes
    python tools/bench_codecs.py --large      # buckets of 25 MB and more, more repeats
    python tools/bench_codecs.py --elements 1000000 --repeat 5 --ref-sample 50000

Contenders: the original pure-Python coder (tools/eg_reference.py, on a
sample, for the speed ratio), gradstore eg with k=0/sign=bit (whose bit
count must equal the reference's), eg with k=auto and rank remap (with and
without zero runs), zlib and zstd over the raw bytes, and the order-0
entropy bounds.  Per contender: compression ratio (raw bytes / payload
bytes; the reference: raw bits / counted bits), bits per element,
efficiency (order-0 entropy of the quantized symbols / bits spent; above
100% means the coder uses more than symbol frequencies, as zero runs do),
encode and decode MB/s of raw input, best of --repeat runs on one core,
the reference included.  Targets are checked at the end; nothing here is
asserted, the numbers are printed as measured.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradstore.codecs import get_codec  # noqa: E402
from gradstore.codecs.stats import byte_entropy_bits, int_entropy_bits  # noqa: E402

_spec = importlib.util.spec_from_file_location("eg_reference", Path(__file__).with_name("eg_reference.py"))
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

SCALE = 1e6
EG_ORIGINAL = "eg:k=0,scale=1e6,sign=bit"
EG_AUTO = "eg:k=auto,scale=1e6,remap=rank"
EG_RUNS = "eg:k=auto,scale=1e6,remap=rank,zeros=run"
CONTENDERS = [EG_ORIGINAL, EG_AUTO, EG_RUNS, "zlib:level=6", "zstd:level=3"]


# --- synthetic gradients ------------------------------------------------------------

def generalized_gaussian(rng: np.random.Generator, shape, std: float, beta: float) -> np.ndarray:
    """Samples of exp(-|x/a|^beta), scaled to ``std``: beta=2 Gaussian, 1 Laplace, <1 heavier."""
    g = rng.gamma(1.0 / beta, 1.0, size=shape) ** (1.0 / beta)
    a = std / math.sqrt(math.gamma(3.0 / beta) / math.gamma(1.0 / beta))
    return np.where(rng.random(shape) < 0.5, -a, a) * g


def weight_grad(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """One linear layer's gradient: heavy-tailed, with rows of differing magnitude."""
    std = 10 ** rng.uniform(-4.7, -3.3)
    beta = rng.uniform(0.6, 1.1)
    row_scale = rng.lognormal(0.0, 0.5, size=(rows, 1))
    return generalized_gaussian(rng, (rows, cols), std, beta) * row_scale


def dense_bucket(rng: np.random.Generator, elements: int, hidden: int) -> np.ndarray:
    """A DDP bucket of a transformer: layer tensors in reverse order until ``elements`` is reached."""
    ffn = int(hidden * 2.75) // 64 * 64
    layer = [(hidden, ffn), (ffn, hidden), (ffn, hidden), (1, hidden),        # mlp down/up/gate, norm
             (hidden, hidden), (hidden, hidden), (hidden, hidden), (hidden, hidden), (1, hidden)]
    parts, total = [], 0
    while total < elements:
        rows, cols = layer[len(parts) % len(layer)]
        if rows == 1:  # norm weights: larger gradients, light tails
            parts.append(generalized_gaussian(rng, (cols,), 10 ** rng.uniform(-3, -2), 1.5))
        else:
            parts.append(weight_grad(rng, rows, cols).ravel())
        total += rows * cols
    return np.concatenate(parts)


def embedding_bucket(rng: np.random.Generator, elements: int, hidden: int, active: float) -> np.ndarray:
    """Token-embedding gradient: only rows of tokens seen in the batch are non-zero."""
    vocab = max(1, elements // hidden)
    grad = np.zeros((vocab, hidden))
    rows = rng.random(vocab) < active
    grad[rows] = weight_grad(rng, int(rows.sum()), hidden)
    return grad.ravel()


def iid_sparse_bucket(rng: np.random.Generator, elements: int, zeros: float) -> np.ndarray:
    """Dense gradients with a random ``zeros`` fraction set to zero (masked / dropped units)."""
    grad = weight_grad(rng, elements // 1024, 1024).ravel()
    grad[rng.random(grad.size) < zeros] = 0.0
    return grad


def datasets(elements: int, hidden: int, seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        ("dense fp32", dense_bucket(rng, elements, hidden).astype(np.float32)),
        ("dense bf16", dense_bucket(rng, elements, hidden).astype(ml_dtypes.bfloat16)),
        ("sparse fp32 embedding (97% zeros)",
         embedding_bucket(rng, elements, hidden // 2, active=0.03).astype(np.float32)),
        ("sparse fp32 iid (95% zeros)", iid_sparse_bucket(rng, elements, 0.95).astype(np.float32)),
    ]


# --- measuring -------------------------------------------------------------------

@dataclass
class Row:
    name: str
    bits_per_element: float
    ratio: float
    efficiency: float | None
    encode_mbs: float | None
    decode_mbs: float | None
    note: str = ""


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def quantized(x: np.ndarray) -> np.ndarray:
    return np.rint(x.astype(np.float64) * SCALE).astype(np.int64)


def measure(label: str, x: np.ndarray, repeat: int, ref_sample: int, rng) -> tuple[list[Row], dict]:
    n, raw_bytes, raw_bits = x.size, x.nbytes, x.itemsize * 8
    entropy = int_entropy_bits(quantized(x))
    rows, facts = [], {"zeros": float(np.mean(x == 0)), "entropy_per_element": entropy / n}

    # the original coder, on a sample (it is far too slow for the whole bucket)
    sample = x[np.sort(rng.choice(n, size=min(ref_sample, n), replace=False))]
    ref_time, ref_bits = best_time(
        lambda: reference.count_bits(sample.astype(np.float64).tolist(), SCALE), repeat)
    eg_sample = get_codec(EG_ORIGINAL).encode(sample)
    facts["reference_match"] = eg_sample.nbits == ref_bits
    facts["reference_mbs"] = sample.nbytes / ref_time / 1e6
    rows.append(Row(f"reference (pure Python, {sample.size} sample)", ref_bits / sample.size,
                    raw_bits * sample.size / ref_bits, entropy / n / (ref_bits / sample.size),
                    facts["reference_mbs"], None, "bits only, no stream"))

    for spec in CONTENDERS:
        codec = get_codec(spec)
        enc_time, encoded = best_time(lambda: codec.encode(x), repeat)
        dec_time, decoded = best_time(lambda: codec.decode(encoded.payload, x.dtype, x.shape), repeat)
        if codec.is_lossless(x.dtype):
            assert decoded.tobytes() == x.tobytes(), spec
        rows.append(Row(spec, encoded.nbits / n, raw_bytes / len(encoded.payload),
                        entropy / encoded.nbits if encoded.nbits else None,
                        raw_bytes / enc_time / 1e6, raw_bytes / dec_time / 1e6,
                        "lossless" if codec.is_lossless(x.dtype) else f"k={encoded.info['k']}"))
        facts[spec] = rows[-1]
    facts["speed_ratio"] = facts[EG_ORIGINAL].encode_mbs / facts["reference_mbs"]

    rows.append(Row("bound: H0 of quantized symbols", entropy / n, raw_bits * n / entropy if entropy else math.inf,
                    1.0, None, None, "order-0, table free"))
    byte_h = byte_entropy_bits(x)
    rows.append(Row("bound: H0 of raw bytes", byte_h / n, raw_bits * n / byte_h if byte_h else math.inf,
                    None, None, None, "order-0 byte coder limit"))
    return rows, facts


def show(label: str, x: np.ndarray, rows: list[Row], facts: dict) -> None:
    print(f"\n## {label}: {x.size:,} elements {x.dtype}, {x.nbytes / 1e6:.1f} MB, "
          f"{facts['zeros']:.1%} zeros, H0(q) = {facts['entropy_per_element']:.3f} bits/element")
    print(f"{'contender':44s} {'ratio':>7s} {'bits/el':>8s} {'eff':>7s} {'enc MB/s':>9s} "
          f"{'dec MB/s':>9s}  note")
    for r in rows:
        eff = f"{r.efficiency:.1%}" if r.efficiency is not None else "-"
        enc = f"{r.encode_mbs:.1f}" if r.encode_mbs is not None else "-"
        dec = f"{r.decode_mbs:.1f}" if r.decode_mbs is not None else "-"
        print(f"{r.name:44s} {r.ratio:7.2f} {r.bits_per_element:8.3f} {eff:>7s} {enc:>9s} {dec:>9s}  {r.note}")
    print(f"eg k=0 bits == reference bits on the sample: {'yes' if facts['reference_match'] else 'NO'}; "
          f"eg k=0 encode / reference: {facts['speed_ratio']:.0f}x")


def summary(results: list[tuple[str, np.ndarray, dict]]) -> None:
    print("\n## targets")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    ratios = [f["speed_ratio"] for _, _, f in results]
    print(f"- >= 150x reference throughput (eg k=0 encode): min {min(ratios):.0f}x -> {verdict(min(ratios) >= 150)}")
    match = all(f["reference_match"] for _, _, f in results)
    print(f"- eg k=0 sign=bit bit counts equal the reference on every sample -> {verdict(match)}")
    for label, x, f in results:
        if f["zeros"] <= 0.9:
            eff = f[EG_AUTO].efficiency
            print(f"- {label}: k=auto+remap at {eff:.1%} of H0 (>= 90%) -> {verdict(eff >= 0.9)}")
        else:
            zstd, runs, plain = f["zstd:level=3"], f[EG_RUNS], f[EG_AUTO]
            print(f"- {label}: eg zeros=run {runs.bits_per_element:.3f} bits/el, eg plain "
                  f"{plain.bits_per_element:.3f}, zstd {zstd.bits_per_element:.3f} "
                  f"-> eg {'beats' if runs.bits_per_element < zstd.bits_per_element else 'loses to'} zstd")
    for label, x, f in results:
        if x.dtype == np.float32:
            enc = min(f[s].encode_mbs for s in (EG_ORIGINAL, EG_AUTO, EG_RUNS))
            dec = min(f[s].decode_mbs for s in (EG_ORIGINAL, EG_AUTO, EG_RUNS))
            print(f"- {label}: eg encode >= 1000 MB/s: slowest mode {enc:.0f} -> {verdict(enc >= 1000)}; "
                  f"decode >= 500 MB/s: slowest mode {dec:.0f} -> {verdict(dec >= 500)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="25 MB buckets (6.5M fp32 elements), hidden 2048")
    parser.add_argument("--elements", type=int, help="elements per bucket (default 3M, 6.5M with --large)")
    parser.add_argument("--repeat", type=int, help="timed runs per measurement, best kept (default 3, 5)")
    parser.add_argument("--ref-sample", type=int, default=100_000, help="elements given to the reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    elements = args.elements or (6_553_600 if args.large else 3_000_000)
    repeat = args.repeat or (5 if args.large else 3)
    hidden = 2048 if args.large else 768

    import numba
    print(f"# gradstore codec benchmark: python {platform.python_version()}, numpy {np.__version__}, "
          f"numba {numba.__version__}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"single thread, best of {repeat}, seed {args.seed}")
    for spec in CONTENDERS:  # compile (or load from cache) before timing
        for dtype in (np.float32, ml_dtypes.bfloat16):
            codec = get_codec(spec)
            small = np.zeros(10, dtype)
            codec.decode(codec.encode(small).payload, small.dtype, small.shape)

    rng = np.random.default_rng(args.seed + 1)
    results = []
    for label, x in datasets(elements, hidden, args.seed):
        rows, facts = measure(label, x, repeat, args.ref_sample, rng)
        show(label, x, rows, facts)
        results.append((label, x, facts))
    summary(results)


if __name__ == "__main__":
    main()
