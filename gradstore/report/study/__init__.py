"""The study: do rank remapping and grouping tensors pay, in bits per element?

Two questions about the ``eg`` codec (quantize, then Exp-Golomb), answered
on a store's own gradients:

1. Does ordering symbols by probability (``remap=rank``) pay?  eg as it
   codes today, one model per tensor, with symbols in natural order and by
   rank (the rank table counted as eg writes it), for k=0 and k=auto.
2. Does grouping tensors pay?  The same quantized values with one model
   per 64K-element chunk of a tensor, per tensor, per bucket (``R_E_S_B``)
   and per module type (layer numbers stripped, across all buckets).

Sizes are exact eg sizes (see ``model``), against the order-0 entropy of
the quantized values of each model.  The work runs on the report engine
(``report.engine``): keys in bounded chunks, in this process, on ``jobs``
worker processes or on a Dask cluster, with a progress bar; only
histograms come back, so memory is bounded by distinct values, not the
store.  Results do not depend on how the work was split.

    study = run("run.gs", spec="eg:scale=1e6,sign=bit", jobs=2)
    print(study.render(width=100))
"""
from __future__ import annotations

import os
from contextlib import ExitStack

from ...keys import module_type
from .model import VARIANTS, Cost, Counts, model_cost
from .result import GROUPINGS, Study
from .task import TaskOut, groups_of, study_task

__all__ = ["run", "Study", "Cost", "VARIANTS", "GROUPINGS", "module_type", "DEFAULT_SPEC", "CHUNK"]

DEFAULT_SPEC = "eg:k=0,scale=1e6,sign=bit"
CHUNK = 1 << 16      # elements per model of the per-chunk grouping


def run(store, keys: list[str] | None = None, spec=None, *, chunk: int = CHUNK, jobs: int = 1,
        dask: str | None = None, scheduler_file: str | None = None, client=None,
        progress: bool | None = None, **filters) -> Study:
    """Study ``keys`` of ``store`` (an open Store or a path; default: all keys, or those
    ``filters`` select) with the scale and sign mode of the eg codec ``spec`` (a spec
    string or codec; default DEFAULT_SPEC; its k and remap are what the study varies,
    and its zeros mode is not studied: values are coded plainly).

    ``chunk``: elements per model of the per-chunk grouping.  ``jobs``, ``dask``,
    ``scheduler_file``, ``client``, ``progress``: as for ``report.run``.
    """
    from ...codecs.eg import EGCodec
    from ...codecs.eg.codec import SIGNS
    from ...variants import codec_of
    from ..engine import Meter, Runner, chunks
    codec = codec_of(DEFAULT_SPEC if spec is None else spec)
    if not isinstance(codec, EGCodec):
        raise ValueError(f"the study needs an eg codec, not {codec.spec}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 element, not {chunk}")
    params = codec.params
    scale, sign = float(params["scale"]), SIGNS.index(params["sign"])
    with ExitStack() as stack:
        if isinstance(store, (str, os.PathLike)):
            from ...store import open_store
            store = stack.enter_context(open_store(store))
        keys = store.keys(**filters) if keys is None else list(keys)
        items = []
        open_buckets: dict[str, list] = {}     # bucket -> [keys not yet seen, Counts, studied]
        for key in keys:
            e = store.entry(key)
            items.append((key, e.checksum, e.payload_len))
            slot = open_buckets.setdefault(groups_of(key)[0], [0, Counts(), False])
            slot[0] += 1
        total_bytes = sum(n for _, _, n in items)
        study = Study(spec=_study_spec(params), chunk=chunk, keys=len(keys))
        if client is None and (dask is not None or scheduler_file is not None):
            from ..dask import connect
            client = stack.enter_context(connect(dask, scheduler_file))
        meter = stack.enter_context(Meter("study", len(keys), total_bytes, enabled=progress))
        runner = stack.enter_context(Runner(store, jobs, client, ("gradstore.report.study.task",)))
        modules: dict[str, Counts] = {}
        tasks = ((scale, sign, chunk, ks, srcs) for ks, srcs, _ in chunks(items, total_bytes, runner.workers))
        for args, out in runner.imap(study_task, tasks):
            _add(study, out, open_buckets, modules, sign)
            meter.advance(len(args[3]), out.raw_bytes)
        for slot in open_buckets.values():   # (none, unless keys changed under the study)
            _close_bucket(study, slot, sign)
        for mtype in sorted(modules):
            study.groupings["module type"].add(model_cost(*modules.pop(mtype).fold(), sign))
        study.skipped.sort()      # (they come in the order the tasks finished)
        return study


def _study_spec(params: dict) -> str:
    return f"eg:scale={params['scale']:g},sign={params['sign']},zeros=plain"


def _add(study: Study, out: TaskOut, open_buckets: dict, modules: dict, sign: int) -> None:
    """Add one task's output; a bucket whose every key is in is modelled and let go."""
    for mtype, cost in out.tensors.items():
        study.by_module.setdefault(mtype, Cost()).add(cost)
        study.groupings["tensor"].add(cost)
    study.groupings["chunk"].add(out.chunks)
    study.skipped.extend(out.skipped)
    for mtype, hist in out.modules.items():
        modules.setdefault(mtype, Counts()).add(*hist)
    for bucket, seen in out.bucket_keys.items():
        slot = open_buckets[bucket]
        if bucket in out.buckets:
            slot[1].add(*out.buckets[bucket])
            slot[2] = True
        slot[0] -= seen
        if slot[0] == 0:
            _close_bucket(study, open_buckets.pop(bucket), sign)


def _close_bucket(study: Study, slot: list, sign: int) -> None:
    """One model for the bucket of ``slot``, if it has a tensor the study took."""
    if slot[2]:
        study.groupings["bucket"].add(model_cost(*slot[1].fold(), sign))
