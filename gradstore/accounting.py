"""Side-by-side size accounting: what each codec costs, per key or per group.

Every size comes from a payload that was really encoded and decoded: a
stored variant (checked against the tensor it encodes) or a trial encoding
done here. Entropy is the order-0 entropy of the symbols the codec codes,
summed over the tensors of a group (each tensor has its own histogram, as
each is coded on its own).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import format as fmt
from .errors import NotEncodableError
from .keys import try_parse
from .variants import codec_of, record_bytes, trial, variant_meta

GROUP_FIELDS = ("rank", "epoch", "step", "bucket", "module")


@dataclass
class _Acc:
    keys: int = 0
    not_encodable: int = 0
    elements: int = 0
    raw_bytes: int = 0
    raw_disk: int = 0
    bits: int = 0
    payload: int = 0
    disk: int = 0
    entropy: float = 0.0
    entropy_known: bool = True
    max_abs: float = 0.0
    sq_err: float = 0.0
    sq_ref: float = 0.0
    lossless: bool = True
    dtypes: set = field(default_factory=set)


def _group_of(key: str, group_by: tuple[str, ...]) -> str:
    if not group_by:
        return key
    parsed = try_parse(key)
    if parsed is None:
        return "(plain keys)"
    return ",".join(f"{g}={getattr(parsed, g)}" for g in group_by)


def _measure(store, key: str, raw_entry, codec):
    """(nbits, payload bytes, disk bytes, entropy bits, lossless, err) for one key."""
    stored = store._find(fmt.KIND_VARIANT, f"{key}\0{codec.spec}")
    if stored is not None and stored.extra.get("src") == raw_entry.checksum:
        x = stored.extra
        return (x["nbits"], stored.payload_len, stored.end - stored.offset,
                (x.get("info") or {}).get("entropy_bits"), x["lossless"], x.get("err"))
    t = trial(codec, store[key])
    meta = variant_meta(key, raw_entry, codec, t)
    return (t.nbits, len(t.payload), record_bytes(meta, len(t.payload)), t.entropy_bits,
            t.lossless, t.err)


def sizes(store, codecs, keys: list[str], group_by: tuple[str, ...] = (),
          progress: bool | None = None) -> list[dict]:
    """One row per (group, codec), plus the raw baseline, in key order."""
    from .progress import bar
    bad = [g for g in group_by if g not in GROUP_FIELDS]
    if bad:
        raise ValueError(f"cannot group by {', '.join(bad)}; choose from {', '.join(GROUP_FIELDS)}")
    codec_objs = [codec_of(c) for c in codecs]
    accs: dict[tuple[str, str], _Acc] = {}
    order: list[str] = []
    for key in bar(keys, "report", progress):
        raw_entry = store.entry(key)
        group = _group_of(key, tuple(group_by))
        if (group, "raw") not in accs:
            order.append(group)
        n = 1
        for d in raw_entry.shape:
            n *= d
        raw_disk = raw_entry.end - raw_entry.offset
        base = accs.setdefault((group, "raw"), _Acc())
        _add_raw(base, raw_entry, n, raw_disk)
        base.bits += raw_entry.payload_len * 8
        base.payload += raw_entry.payload_len
        base.disk += raw_disk
        base.entropy_known = False
        for codec in codec_objs:
            acc = accs.setdefault((group, codec.spec), _Acc())
            try:
                nbits, payload, disk, entropy, lossless, err = _measure(store, key, raw_entry, codec)
            except NotEncodableError:
                acc.not_encodable += 1
                continue
            _add_raw(acc, raw_entry, n, raw_disk)
            acc.bits += nbits
            acc.payload += payload
            acc.disk += disk
            if entropy is None:
                acc.entropy_known = False
            else:
                acc.entropy += entropy
            acc.lossless &= lossless
            if err:
                acc.max_abs = max(acc.max_abs, err["max_abs"])
                acc.sq_err += err["sq_err"]
                acc.sq_ref += err["sq_ref"]
    rows = []
    for group in order:
        for spec in ["raw"] + [c.spec for c in codec_objs]:
            rows.append(_row(group, spec, accs.get((group, spec), _Acc())))
    return rows


def _add_raw(acc: _Acc, raw_entry, n: int, raw_disk: int) -> None:
    acc.keys += 1
    acc.elements += n
    acc.raw_bytes += raw_entry.payload_len
    acc.raw_disk += raw_disk
    acc.dtypes.add(raw_entry.dtype)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _row(group: str, spec: str, a: _Acc) -> dict:
    ratio_theory = _ratio(a.bits, 8 * a.raw_bytes)
    ratio_os = _ratio(a.disk, a.raw_disk)
    bpe = _ratio(a.bits, a.elements)
    h = _ratio(a.entropy, a.elements) if a.entropy_known and a.keys else None
    rel_l2 = None
    if not a.lossless:
        rel_l2 = (a.sq_err / a.sq_ref) ** 0.5 if a.sq_ref else (0.0 if not a.sq_err else float("inf"))
    return {
        "group": group, "codec": spec, "keys": a.keys, "not_encodable": a.not_encodable,
        "elements": a.elements, "dtype": ",".join(sorted(a.dtypes)), "raw_bytes": a.raw_bytes,
        "bits": a.bits, "payload_bytes": a.payload, "disk_bytes": a.disk,
        "ratio_theory": ratio_theory, "saving_theory": None if ratio_theory is None else 1 - ratio_theory,
        "ratio_os": ratio_os, "saving_os": None if ratio_os is None else 1 - ratio_os,
        "bits_per_element": bpe, "entropy_per_element": h,
        "efficiency": _ratio(h, bpe) if h is not None and bpe else None,
        "lossless": a.lossless, "max_abs_err": None if a.lossless else a.max_abs,
        "rel_l2_err": rel_l2,
    }
