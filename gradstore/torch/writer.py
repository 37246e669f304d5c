"""The background thread that stores captured buckets, so the training step never waits on disk."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import torch

from ..variants import encode_held
from .buffers import HostBufferPool
from .convert import tensor_to_numpy


@dataclass
class Pending:
    """A bucket copied into a host buffer, waiting for the writer.

    ``modules`` holds (name, shape, element offset in ``buf`` viewed as ``dtype``).
    """

    name: str
    dtype: torch.dtype
    modules: list[tuple[str, tuple[int, ...], int]]
    buf: torch.Tensor
    nbytes: int
    event: object | None = None   # a CUDA event to wait on before reading ``buf``


@dataclass
class WriterStats:
    buckets: int = 0
    tensors: int = 0
    bytes: int = 0
    not_encodable: dict[str, str] = field(default_factory=dict)


class BucketWriter:
    """One thread: write each pending bucket (and its variants), then give its buffer back."""

    def __init__(self, store, pool: HostBufferPool, codecs: list[str] = (), raw: bool = True):
        self.store = store
        self.pool = pool
        self.codecs = list(codecs)
        self.raw = raw   # False: the codecs' variants only (Store.write_encoded)
        self.stats = WriterStats()
        self.error: BaseException | None = None
        self._queue: queue.Queue[Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="gradstore-capture", daemon=True)
        self._thread.start()

    def put(self, item: Pending) -> None:
        self._queue.put(item)

    def flush(self) -> None:
        """Return once every bucket handed over so far is stored (or failed)."""
        self._queue.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.error is None:  # after a failure, buckets are released unwritten
                    self._write(item)
            except BaseException as exc:  # reported by the capture on its next call
                self.error = exc
            finally:
                if item is not None:
                    self.pool.release(item.buf)
                self._queue.task_done()

    def _write(self, item: Pending) -> None:
        if item.event is not None:
            item.event.synchronize()
        flat = item.buf[:item.nbytes].view(item.dtype)
        tensors = {}
        for module, shape, offset in item.modules:
            n = 1
            for d in shape:
                n *= d
            tensors[module] = tensor_to_numpy(flat[offset:offset + n].view(shape))
        if self.raw:
            self.store.write_bucket(item.name, tensors)
        else:
            result = self.store.write_encoded(item.name, tensors, self.codecs)
            for key in result.raw:   # no codec could: stored as a tensor
                self.stats.not_encodable[key] = "; ".join(
                    f"{spec}: {why[key]}" for spec, why in result.failed.items() if key in why)
        self.stats.buckets += 1
        self.stats.tensors += len(tensors)
        self.stats.bytes += item.nbytes
        if self.raw and self.codecs:
            arrays = {f"{item.name}/{module}": a for module, a in tensors.items()}
            # from the host buffer, not read back; all codecs in one run
            for why in encode_held(self.store, self.codecs, arrays).values():
                self.stats.not_encodable.update(why)
