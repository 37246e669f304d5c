"""Encoded variants stored next to the raw records (kind 2, stream "var").

A variant is identified by (key, canonical codec spec) and remembers the
checksum of the tensor it encodes, so re-encoding is idempotent and a
variant of an overwritten tensor is recognisably stale.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import format as fmt
from .errors import CodecError, NotEncodableError

def codec_of(spec):
    from .codecs.registry import get_codec
    return get_codec(spec)


def error_metrics(raw: np.ndarray, decoded: np.ndarray) -> dict:
    """max abs error and relative L2 error, with the sums that let groups aggregate."""
    if raw.size == 0:
        return {"max_abs": 0.0, "rel_l2": 0.0, "sq_err": 0.0, "sq_ref": 0.0}
    from .codecs.stats import error_sums
    sums = error_sums(raw, decoded)   # one pass, no float64 copies (float dtypes)
    if sums is None:
        ref = raw.astype(np.float64, copy=False)
        diff = decoded.astype(np.float64) - ref
        sums = (np.max(np.abs(diff)), np.dot(diff.reshape(-1), diff.reshape(-1)),
                np.dot(ref.reshape(-1), ref.reshape(-1)))
    return _metrics(*sums)


def _metrics(max_abs, sq_err, sq_ref) -> dict:
    max_abs, sq_err, sq_ref = float(max_abs), float(sq_err), float(sq_ref)
    rel = (sq_err / sq_ref) ** 0.5 if sq_ref > 0 else (0.0 if sq_err == 0 else float("inf"))
    return {"max_abs": max_abs, "rel_l2": rel, "sq_err": sq_err, "sq_ref": sq_ref}


@dataclass
class Trial:
    """One tensor through one codec: what the payload costs and how well it decodes."""

    payload: bytes
    nbits: int
    lossless: bool
    entropy_bits: float | None
    info: dict
    err: dict | None


def trial(codec, raw: np.ndarray) -> Trial:
    """Encode, then decode and compare, so every reported size really decodes.

    Raises NotEncodableError for tensors the codec cannot represent and
    CodecError if the payload does not decode back as it must.
    """
    enc = codec.encode(raw)
    lossless = codec.is_lossless(raw.dtype)
    sums = None
    if not lossless and raw.size and hasattr(codec, "decode_compared"):  # error sums in the decoder's pass
        decoded, sums = codec.decode_compared(enc.payload, raw)
    else:
        decoded = codec.decode(enc.payload, raw.dtype, raw.shape)
    if decoded.shape != raw.shape or decoded.dtype != raw.dtype:
        raise CodecError(f"{codec.spec}: decoded {decoded.dtype}{decoded.shape}, "
                         f"expected {raw.dtype}{raw.shape}")
    err = None
    if lossless:
        if raw.reshape(-1).view(np.uint8).tobytes() != decoded.reshape(-1).view(np.uint8).tobytes():
            raise CodecError(f"{codec.spec}: claims to be lossless but did not round-trip")
    else:
        err = error_metrics(raw, decoded) if sums is None else _metrics(*sums)
    info = dict(enc.info)
    info["nsymbols"] = enc.nsymbols
    return Trial(bytes(enc.payload), int(enc.nbits), lossless, enc.entropy_bits, info, err)


def variant_meta(key: str, raw_entry, codec, t: Trial) -> dict:
    meta = {"key": key, "dtype": raw_entry.dtype, "shape": list(raw_entry.shape),
            "time": time.time_ns(), "codec": codec.spec, "nbits": t.nbits,
            "src": raw_entry.checksum, "lossless": t.lossless,
            "info": dict(t.info, entropy_bits=t.entropy_bits)}
    if t.err is not None:
        meta["err"] = t.err
    return meta


def record_bytes(meta: dict, payload_len: int) -> int:
    """Bytes a record with this meta and payload takes on disk, padding included."""
    return fmt.align(fmt.record_header_len(fmt.pack_meta(meta)) + payload_len)


@dataclass
class EncodeResult:
    """What ``Store.encode`` did, key by key."""

    spec: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)   # key -> reason (not encodable)

    def __str__(self) -> str:
        return (f"{self.spec}: {len(self.written)} encoded, {len(self.skipped)} already there, "
                f"{len(self.failed)} not encodable")


def coded_variants(codecs, sources) -> tuple[list, dict[str, list[str]], dict[str, dict[str, str]]]:
    """Each codec's variant of each (key, array, source) of ``sources``, where
    ``source`` is what variant_meta needs of the tensor (its index entry, or
    what its record would hold): the (meta, payload) items to append as one
    run, {spec: keys coded} and {spec: {key: why}} of those a codec cannot
    represent."""
    items: list = []
    written: dict[str, list[str]] = {c.spec: [] for c in codecs}
    failed: dict[str, dict[str, str]] = {c.spec: {} for c in codecs}
    for key, arr, source in sources:
        for codec in codecs:
            try:
                t = trial(codec, arr)
            except NotEncodableError as exc:
                failed[codec.spec][key] = str(exc) or type(exc).__name__
                continue
            items.append((variant_meta(key, source, codec, t), t.payload))
            written[codec.spec].append(key)
    return items, written, failed


def encode_held(store, specs, arrays: dict) -> dict[str, dict[str, str]]:
    """Store each codec's variant of the arrays just written under their keys
    ({key: array}), all in one run; {spec: {key: why}} of those a codec
    could not represent.

    For a caller that holds the arrays (capture: its host buffer), so that
    nothing is read back, and one run costs one write call where a run per
    key costs one each (with direct I/O, a device write of a block or more).
    """
    ns = store._check_writable()
    items, _, failed = coded_variants([codec_of(s) for s in specs],
                                      [(key, arr, store.entry(key)) for key, arr in arrays.items()])
    if items:
        ns.append_many(fmt.KIND_VARIANT, items)
    return failed


def find_variant(store, key: str, spec):
    """(codec, entry) of the stored ``spec`` variant of ``key``; KeyError if there is none."""
    codec = codec_of(spec)
    e = store._find(fmt.KIND_VARIANT, f"{key}\0{codec.spec}")
    if e is None:
        raise KeyError(f"no {codec.spec!r} variant of {key!r} in {store.path} "
                       f"(run encode first; stored: {', '.join(store.variant_specs(key)) or 'none'})")
    return codec, e


def decode_variant(store, key: str, spec, verify: bool = False) -> np.ndarray:
    codec, e = find_variant(store, key, spec)
    payload = store._payload(e)
    if verify:
        store._verify_payload(e, payload)
    from .dtypes import to_numpy
    return codec.decode(payload, to_numpy(e.dtype), e.shape)
