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
          progress: bool | None = None, jobs: int = 1) -> list[dict]:
    """One row per (group, codec), plus the raw baseline, in key order.

    With ``jobs > 1`` the keys are shared among worker processes, each with
    its own read-only view of the store; their sums merge exactly.
    """
    bad = [g for g in group_by if g not in GROUP_FIELDS]
    if bad:
        raise ValueError(f"cannot group by {', '.join(bad)}; choose from {', '.join(GROUP_FIELDS)}")
    codec_objs = [codec_of(c) for c in codecs]
    specs = [c.spec for c in codec_objs]
    if jobs > 1 and len(keys) > 1:
        accs, order = _parallel(store.path, specs, keys, tuple(group_by), jobs, progress)
    else:
        from .progress import bar
        accs, order = _accumulate(store, codec_objs, bar(keys, "report", progress), tuple(group_by))
    return [_row(group, spec, accs.get((group, spec), _Acc()))
            for group in order for spec in ["raw"] + specs]


def _accumulate(store, codec_objs, keys, group_by):
    accs: dict[tuple[str, str], _Acc] = {}
    order: list[str] = []
    for key in keys:
        raw_entry = store.entry(key)
        group = _group_of(key, group_by)
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
    return accs, order


def _work(path, specs, keys, group_by):
    from .store import open_store
    with open_store(path) as store:
        return _accumulate(store, [codec_of(s) for s in specs], keys, group_by)


def _parallel(path, specs, keys, group_by, jobs, progress):
    """Chunks of keys to a process pool; merge the partial sums in key order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from .progress import bar
    size = max(1, min(256, len(keys) // (jobs * 4) or 1))
    chunks = [keys[i:i + size] for i in range(0, len(keys), size)]
    accs: dict[tuple[str, str], _Acc] = {}
    order: list[str] = []
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding maps and threads
    with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        futures = [pool.submit(_work, path, specs, chunk, group_by) for chunk in chunks]
        for fut in bar(futures, "report", progress, unit="chunk"):
            part, part_order = fut.result()
            for group in part_order:
                if (group, "raw") not in accs:
                    order.append(group)
            for k, a in part.items():
                accs[k] = _merge(accs[k], a) if k in accs else a
    return accs, order


def _merge(a: _Acc, b: _Acc) -> _Acc:
    return _Acc(
        keys=a.keys + b.keys, not_encodable=a.not_encodable + b.not_encodable,
        elements=a.elements + b.elements, raw_bytes=a.raw_bytes + b.raw_bytes,
        raw_disk=a.raw_disk + b.raw_disk, bits=a.bits + b.bits, payload=a.payload + b.payload,
        disk=a.disk + b.disk, entropy=a.entropy + b.entropy,
        entropy_known=a.entropy_known and b.entropy_known, max_abs=max(a.max_abs, b.max_abs),
        sq_err=a.sq_err + b.sq_err, sq_ref=a.sq_ref + b.sq_ref, lossless=a.lossless and b.lossless,
        dtypes=a.dtypes | b.dtypes)


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
