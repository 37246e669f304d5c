"""``gradstore report --plot DIR``: the report's per-key results as three PNGs.

  saving_per_bucket.png     histogram of the saving per R_E_S_B bucket, per codec
  saving_per_step.png       saving against step, one line per rank and codec
  bits_vs_entropy.png       bits per element against the entropy, per module type
  hook_bytes_per_step.png   when the store holds a communication hook's records
                            (gradstore.hookstats): bytes sent per step against
                            the bucket bytes, and bits per element, per rank

Saving is 1 - coded bits / raw bits (the "theory" figures of the report).
The results stream in (a whole run's worth does not fit in memory) and are
added up per (codec, bucket), (codec, rank, step) and (codec, module type):
only those sums are kept.  Keys not of the R_E_S_B/module form are left out.
matplotlib is an optional dependency: importing this module without it
raises ImportError.
"""
from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..keys import module_type, try_parse  # noqa: E402
from .result import KeyResult  # noqa: E402

FILES = ("saving_per_bucket.png", "saving_per_step.png", "bits_vs_entropy.png")
HOOK_FILE = "hook_bytes_per_step.png"


class Sums:
    """What the plots need, added up as the results stream by."""

    def __init__(self) -> None:
        # (codec, group) -> [coded bits, raw bits]
        self.bucket: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        self.step: dict[tuple[str, int, int], list[int]] = defaultdict(lambda: [0, 0])
        # (codec, module type) -> [coded bits, entropy bits, elements]
        self.module: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0])
        self.codecs: dict[str, None] = {}

    def add(self, r: KeyResult) -> None:
        if r.codec == "raw" or r.failed is not None:
            return
        k = try_parse(r.key)
        if k is None:
            return
        self.codecs.setdefault(r.codec, None)
        raw_bits = 8 * r.raw_bytes
        for acc in (self.bucket[(r.codec, k.bucket_name)], self.step[(r.codec, k.rank, k.step)]):
            acc[0] += r.nbits
            acc[1] += raw_bits
        m = self.module[(r.codec, module_type(k.module))]
        m[0] += r.nbits
        m[1] += r.entropy_bits or 0.0
        m[2] += r.elements


def write(results: Iterable[KeyResult], out_dir: str | os.PathLike) -> list[str]:
    """The three PNGs of ``results`` in ``out_dir`` (created); their paths."""
    sums = Sums()
    for r in results:
        sums.add(r)
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, name) for name in FILES]
    for draw, path in zip((_per_bucket, _per_step, _bits_vs_entropy), paths):
        fig = draw(sums)
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return paths


def _short(spec: str) -> str:
    """A legend label: the spec without the parameters left at their defaults."""
    name, _, params = spec.partition(":")
    keep = [p for p in params.split(",") if p and p not in ("remap=none", "zeros=plain")]
    return name + (":" + ",".join(keep) if keep else "")


def _saving(acc) -> float:
    return 1 - acc[0] / acc[1] if acc[1] else 0.0


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)


def _per_bucket(sums: Sums):
    codecs = list(sums.codecs)
    fig, axes = plt.subplots(max(1, len(codecs)), 1, figsize=(7, 2.4 * max(1, len(codecs))),
                             squeeze=False)
    for ax, codec in zip(axes[:, 0], codecs):
        savings = [100 * _saving(acc) for (c, _), acc in sums.bucket.items() if c == codec]
        ax.hist(savings, bins=min(50, max(5, len(savings) // 4)), color="C0")
        ax.set_title(f"{_short(codec)}: {len(savings)} buckets", fontsize=9)
        ax.set_ylabel("buckets")
    if not codecs:
        _empty(axes[0, 0], "coded results")
    axes[-1, 0].set_xlabel("saving per bucket (%, 1 - coded bits / raw bits)")
    fig.suptitle("Saving per gradient bucket")
    fig.tight_layout()
    return fig


def _per_step(sums: Sums):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lines = defaultdict(dict)
    for (codec, rank, step), acc in sums.step.items():
        lines[(codec, rank)][step] = 100 * _saving(acc)
    styles = {c: f"C{i % 10}" for i, c in enumerate(sums.codecs)}
    marks = "o^sDv<>ph*"
    for (codec, rank), points in sorted(lines.items(), key=lambda kv: (list(sums.codecs).index(kv[0][0]),
                                                                       kv[0][1])):
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], color=styles[codec], marker=marks[rank % len(marks)],
                markersize=3, linewidth=1, label=f"{_short(codec)}, rank {rank}")
    if not lines:
        _empty(ax, "coded results")
    else:
        ax.legend(fontsize=7, ncol=2)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("step")
    ax.set_ylabel("saving (%, 1 - coded bits / raw bits)")
    ax.set_title("Saving against step, per rank")
    fig.tight_layout()
    return fig


def _bits_vs_entropy(sums: Sums):
    codecs = list(sums.codecs)
    types = sorted({t for _, t in sums.module})
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * max(1, len(types)) * max(1, len(codecs)) ** 0.5))
    height = 0.8 / max(1, len(codecs))
    for i, codec in enumerate(codecs):
        ys, bits, ents = [], [], []
        for j, t in enumerate(types):
            acc = sums.module.get((codec, t))
            if not acc or not acc[2]:
                continue
            ys.append(j + (i - (len(codecs) - 1) / 2) * height)
            bits.append(acc[0] / acc[2])
            ents.append(acc[1] / acc[2])
        ax.barh(ys, bits, height=height * 0.9, color=f"C{i % 10}", label=f"{_short(codec)}: bits/element")
        ax.scatter(ents, ys, marker="|", s=120, color="black", zorder=3,
                   label="order-0 entropy of the coded symbols" if i == 0 else None)
    if not types:
        _empty(ax, "R_E_S_B/module keys")
    ax.set_yticks(range(len(types)), [t if len(t) <= 45 else "…" + t[-44:] for t in types], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("bits per element")
    ax.set_title("Bits per element against the entropy, per module type")
    if codecs:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def write_hooks(stats: dict, out_dir: str | os.PathLike) -> str:
    """``hook_bytes_per_step.png`` of {(hook, rank): records} (gradstore.hookstats) in ``out_dir``."""
    fig, (sent, bits) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, ((hook, rank), records) in enumerate(stats.items()):
        before, after, numel = defaultdict(int), defaultdict(int), defaultdict(int)
        for r in records:
            before[r.step] += r.bytes_before
            after[r.step] += r.bytes_after
            numel[r.step] += r.numel
        steps = sorted(before)
        color = f"C{i % 10}"
        sent.plot(steps, [after[s] / 2**20 for s in steps], color=color, linewidth=1.2,
                  label=f"{hook}, rank {rank}: sent")
        sent.plot(steps, [before[s] / 2**20 for s in steps], color=color, linewidth=1, linestyle="--",
                  label=f"{hook}, rank {rank}: bucket bytes (all-reduce)")
        bits.plot(steps, [8 * after[s] / numel[s] if numel[s] else 0 for s in steps], color=color,
                  linewidth=1.2, label=f"{hook}, rank {rank}")
    for ax, ylabel, title in ((sent, "MiB per step", "Bytes sent per step"),
                              (bits, "bits per element", "Bits on the wire per gradient element")):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if stats:
            ax.legend(fontsize=7)
        else:
            _empty(ax, "hook records")
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, HOOK_FILE)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
