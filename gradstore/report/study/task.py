"""The study's work on a chunk of keys, in whichever process runs it.

Each tensor is scanned once, by the eg encoder's own first pass
(``passes.Source.scan``: quantize and count, in the kernels), one window of
``chunk`` elements at a time; the window histograms are the per-chunk
models, and added up they are the tensor's.  What goes back to the main
process is small: costs added up per module type, and one histogram per
bucket and per module type of the task (distinct values and counts), which
the main process adds to those of the other tasks.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ...codecs.eg.passes import Source, is_float
from ...errors import CodecError, NotEncodableError
from ...keys import module_type, try_parse
from ..measure import _entry, release, worker_store
from .model import Cost, Counts, model_cost


def groups_of(key: str) -> tuple[str, str]:
    """(bucket, module type) of a key; a plain key is a bucket of its own."""
    parsed = try_parse(key)
    if parsed is None:
        return key, module_type(key)
    return parsed.bucket_name, module_type(parsed.module)


@dataclass
class TaskOut:
    """What one task found (see the module docstring)."""

    tensors: dict[str, Cost] = field(default_factory=dict)     # per-tensor models, by module type
    chunks: Cost = field(default_factory=Cost)                 # per-chunk models
    buckets: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    bucket_keys: dict[str, int] = field(default_factory=dict)  # keys of each bucket seen, skipped too
    modules: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (key, why)
    raw_bytes: int = 0


def scan_tensor(array: np.ndarray, scale: float, sign: int, chunk: int) -> tuple[np.ndarray, np.ndarray, Cost]:
    """(distinct quantized values, counts, cost of one model per ``chunk`` elements) of a float
    array; NotEncodableError as eg raises it."""
    flat = array.reshape(-1)
    total, cost = Counts(), Cost()
    for start in range(0, max(flat.size, 1), chunk):
        hist = Source(flat[start:start + chunk], scale).scan(False)
        counts = hist.counts.astype(np.int64, copy=False)
        cost.add(model_cost(hist.keys, counts, sign))
        total.add(hist.keys, counts)
    keys, counts = total.fold()
    return keys, counts, cost


def study_task(source, scale: float, sign: int, chunk: int, keys: list[str],
               srcs: list[int] | None = None) -> TaskOut:
    """Scan every key of a chunk of keys; see the module docstring."""
    store = worker_store(source)
    out = TaskOut()
    buckets: dict[str, Counts] = defaultdict(Counts)
    modules: dict[str, Counts] = defaultdict(Counts)
    for i, key in enumerate(keys):
        e = _entry(store, key, None if srcs is None else srcs[i])
        bucket, mtype = groups_of(key)
        out.bucket_keys[bucket] = out.bucket_keys.get(bucket, 0) + 1
        out.raw_bytes += e.payload_len
        try:
            array = store._view(e)
            if not is_float(array.dtype):
                out.skipped.append((key, f"not a float tensor ({e.dtype})"))
                continue
            hist_keys, counts, chunk_cost = scan_tensor(array, scale, sign, chunk)
        except (NotEncodableError, CodecError) as exc:
            out.skipped.append((key, str(exc) or type(exc).__name__))
            continue
        finally:
            release(store, e)
        out.chunks.add(chunk_cost)
        tensor_cost = chunk_cost if chunk_cost.models == 1 else model_cost(hist_keys, counts, sign)
        out.tensors.setdefault(mtype, Cost()).add(tensor_cost)
        buckets[bucket].add(hist_keys, counts)
        modules[mtype].add(hist_keys, counts)
    out.buckets = {b: c.fold() for b, c in buckets.items()}
    out.modules = {m: c.fold() for m, c in modules.items()}
    return out
