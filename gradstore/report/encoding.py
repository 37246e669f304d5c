"""``Store.encode`` on the report engine: workers encode, this process stores.

A store has a single writer, so worker processes (or Dask workers) only
encode and check each tensor and send back the record; this process
appends it.  Keys whose variant from the same tensor is stored already are
skipped before any work is handed out, which makes an interrupted encode
resume where it stopped.
"""
from __future__ import annotations

from contextlib import ExitStack

from .. import format as fmt
from ..variants import EncodeResult, codec_of


def encode(store, spec, keys: list[str], *, jobs: int = 1, dask: str | None = None,
           scheduler_file: str | None = None, client=None, progress: bool | None = None
           ) -> EncodeResult:
    """Write the ``spec`` variant of each of ``keys`` into ``store`` (open for writing)."""
    from .engine import Meter, Runner, chunks, start_early
    ns = store._check_writable()
    start_early(store, keys, [spec], jobs,
                client is not None or dask is not None or scheduler_file is not None)
    from .measure import encode_task
    codec = codec_of(spec)
    result = EncodeResult(codec.spec)
    pending = []
    total = done_bytes = 0
    for key in keys:
        e = store.entry(key)
        total += e.payload_len
        have = store._find(fmt.KIND_VARIANT, f"{key}\0{codec.spec}")
        if have is not None and have.extra.get("src") == e.checksum:
            result.skipped.append(key)
            done_bytes += e.payload_len
        else:
            pending.append((key, e.checksum, e.payload_len))
    with ExitStack() as stack:
        if client is None and (dask is not None or scheduler_file is not None):
            from .dask import connect
            client = stack.enter_context(connect(dask, scheduler_file))
        meter = stack.enter_context(Meter("encode", len(keys), total, len(result.skipped),
                                          done_bytes, progress))
        runner = stack.enter_context(Runner(store, jobs, client))
        tasks = ((codec.spec, ks, srcs) for ks, srcs, _ in
                 chunks(pending, total - done_bytes, runner.workers))
        for (_, ks, _), out in runner.imap(encode_task, tasks):
            for key, meta, payload in out:
                if meta is None:
                    result.failed[key] = payload
                else:
                    ns.append(fmt.KIND_VARIANT, meta, payload)
                    result.written.append(key)
            meter.advance(len(ks), sum(store.entry(k).payload_len for k in ks))
    return result

