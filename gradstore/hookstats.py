"""What a compressing communication hook sent, bucket by bucket, and how it is written out.

Kept apart from the hook (and free of torch) so the records can be summed,
written and read back without a process group. One :class:`BucketRecord`
is made per bucket per step on each rank; :func:`totals` sums them the way
PowerSGD's ``compression_stats()`` sums its counts, and :func:`write_stats`
writes them as CSV (one row per record) or JSON (totals and records).

A ``GradientCapture`` registered with the hook writes each rank's records
into the store, as ``hooks/<hook>-r<rank>.csv`` (spec/FORMAT.md, section 1),
where ``gradstore report`` prints their totals and ``--plot`` draws them.
"""
from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

FALLBACKS = ("nonfinite", "range")   # why a bucket went by exact all-reduce instead
HOOKS_DIR = "hooks"                   # in a store: the hooks' records, one CSV per hook and rank
_STORE_FILE = re.compile(r"([a-z][a-z0-9_]*)-r(0|[1-9][0-9]*)\.csv")


@dataclass(frozen=True)
class BucketRecord:
    """One bucket at one step, as this rank saw it.

    ``bytes_before`` is the bucket's own size (what the default all-reduce
    hands to the wire: numel x element size); ``bytes_after`` is what this
    rank really sent: the 8-byte length exchange plus the payload padded to
    the longest of all ranks (the all-gather sends equal lengths), or plus
    the whole bucket when it fell back to the exact all-reduce.
    ``gathered_bytes`` is the sum of every rank's unpadded payload.
    """

    step: int
    bucket: int
    numel: int
    bytes_before: int
    payload_bytes: int     # this rank's EG payload, header included (0 on a fallback)
    gathered_bytes: int    # all ranks' payloads, unpadded (0 on a fallback)
    bytes_after: int       # sent by this rank: length exchange + padded payload (or exact bucket)
    encode_s: float        # error feedback, quantization and EG coding of this rank's bucket
    comm_s: float          # the length exchange and the payload all-gather (or the all-reduce)
    decode_s: float        # decoding every payload, averaging, writing the bucket, the residual
    fallback: str = ""     # "" (EG-coded), "nonfinite" or "range": exact all-reduce, and why

    @property
    def bits_per_element(self) -> float:
        """Bits on the wire per gradient element (32 for an fp32 all-reduce)."""
        return 8 * self.bytes_after / self.numel if self.numel else 0.0


class Totals:
    """Running sums over records: kept by the hook whether or not it keeps every record."""

    _SUMMED = ("numel", "bytes_before", "bytes_after", "payload_bytes",
               "encode_s", "comm_s", "decode_s")

    def __init__(self) -> None:
        self.sums = {"buckets": 0, "numel": 0, "bytes_before": 0, "bytes_after": 0,
                     "payload_bytes": 0, "encode_s": 0.0, "comm_s": 0.0, "decode_s": 0.0,
                     "fallbacks": 0, **{f"fallback_{why}": 0 for why in FALLBACKS}}

    def add(self, record: BucketRecord) -> None:
        s = self.sums
        s["buckets"] += 1
        for name in self._SUMMED:
            s[name] += getattr(record, name)
        if record.fallback:
            s["fallbacks"] += 1
            s[f"fallback_{record.fallback}"] += 1

    def as_dict(self) -> dict:
        """The sums, with the rate (before / after, PowerSGD's sense), its inverse and bits/element."""
        out = dict(self.sums)
        after, before = out["bytes_after"], out["bytes_before"]
        out["compress_rate"] = before / after if after else 0.0
        out["wire_ratio"] = after / before if before else 0.0
        out["bits_per_element"] = 8 * after / out["numel"] if out["numel"] else 0.0
        return out


def totals(records: Iterable[BucketRecord]) -> dict:
    """The sums over ``records``: bytes, rate, bits per element, seconds and fallback counts."""
    acc = Totals()
    for r in records:
        acc.add(r)
    return acc.as_dict()


def as_row(record: BucketRecord) -> dict:
    """The record as a flat dict, bits per element included (a CSV row, a JSON object)."""
    row = asdict(record)
    row["bits_per_element"] = record.bits_per_element
    return row


COLUMNS = tuple(f.name for f in fields(BucketRecord)) + ("bits_per_element",)


def write_stats(records: Iterable[BucketRecord], path: str | os.PathLike, *,
                sums: dict | None = None, **extra) -> str:
    """Write ``records`` to ``path``: CSV (a row per record) if it ends in .csv, else JSON.

    The JSON holds ``{**extra, "totals": ..., "records": [...]}`` (``extra``:
    say the rank or the codec spec; ``sums``: totals kept apart from the
    records, else they are summed from them). Returns the path written.
    """
    records = list(records)
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"   # whole or not at all: a reader never sees half a file
    try:
        if path.lower().endswith(".csv"):
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(as_row(r) for r in records)
        else:
            with open(tmp, "w") as f:
                doc = {**extra, "totals": sums if sums is not None else totals(records),
                       "records": [as_row(r) for r in records]}
                json.dump(doc, f, indent=1)
                f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_stats(path: str | os.PathLike) -> list[BucketRecord]:
    """The records a :func:`write_stats` file holds (CSV or JSON)."""
    path = os.fspath(path)
    if path.lower().endswith(".csv"):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        with open(path) as f:
            rows = json.load(f)["records"]
    kinds = {f.name: f.type for f in fields(BucketRecord)}
    cast = {"int": int, "float": float, "str": str}
    try:
        return [BucketRecord(**{name: cast[kinds[name]](row[name]) for name in kinds})
                for row in rows]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a hook statistics file ({type(exc).__name__}: {exc})") from None


# -- in a store -------------------------------------------------------------

def store_path(store: str | os.PathLike, hook: str, rank: int) -> str:
    """Where a capture writes ``hook``'s records of ``rank`` in the store at ``store``."""
    if not _STORE_FILE.fullmatch(f"{hook}-r{rank}.csv"):
        raise ValueError(f"a hook name is lower case letters, digits and _, not {hook!r}")
    return os.path.join(os.fspath(store), HOOKS_DIR, f"{hook}-r{rank}.csv")


def write_to_store(records: Iterable[BucketRecord], store: str | os.PathLike, hook: str,
                   rank: int) -> str:
    path = store_path(store, hook, rank)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return write_stats(records, path)


def read_store(store: str | os.PathLike) -> tuple[dict[tuple[str, int], list[BucketRecord]], list[str]]:
    """The hooks' records a store holds, {(hook, rank): records}, and a line per file not readable."""
    d = os.path.join(os.fspath(store), HOOKS_DIR)
    try:
        names = sorted(os.listdir(d))
    except (FileNotFoundError, NotADirectoryError):
        return {}, []
    out, problems = {}, []
    for name in names:
        m = _STORE_FILE.fullmatch(name)
        if m is None:
            continue
        try:
            out[(m.group(1), int(m.group(2)))] = read_stats(os.path.join(d, name))
        except (OSError, ValueError, csv.Error) as exc:
            problems.append(f"{HOOKS_DIR}/{name}: {exc}")
    return dict(sorted(out.items())), problems


def render(stats: dict[tuple[str, int], list[BucketRecord]]) -> str:
    """A line per hook and rank: what it sent against what the fp all-reduce would have."""
    lines = ["communication hook statistics (hooks/ in the store; times in ms per step):",
             f"  {'hook':5s} {'rank':>4s} {'steps':>6s} {'buckets':>7s} {'bytes before':>13s} "
             f"{'bytes sent':>13s} {'ratio':>7s} {'bits/el':>7s} {'enc/comm/dec':>17s} {'fallback':>8s}"]
    for (hook, rank), records in stats.items():
        t = totals(records)
        steps = len({r.step for r in records})
        per = [1e3 * t[p] / steps if steps else 0.0 for p in ("encode_s", "comm_s", "decode_s")]
        lines.append(f"  {hook:5s} {rank:4d} {steps:6d} {t['buckets']:7d} {t['bytes_before']:13,d} "
                     f"{t['bytes_after']:13,d} {t['wire_ratio']:6.3f}x {t['bits_per_element']:7.2f} "
                     f"{'/'.join(f'{v:.1f}' for v in per):>17s} {t['fallbacks']:8d}")
    return "\n".join(lines)
