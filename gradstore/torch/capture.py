"""Capture DDP gradients into a store from a communication hook, without making the step wait on disk.

    with GradientCapture("run.gs") as capture:
        capture.register(ddp_model)                # or register(ddp_model, bf16_compress_hook)
        for step, batch in enumerate(loader):
            capture.step(epoch=epoch, step=step)   # optional: steps are counted by themselves
            loss(ddp_model(batch)).backward()
            optimizer.step()

Each bucket is stored as ``R_{rank}_E_{epoch}_S_{step}_B_{bucket}/{parameter name}``,
with what the bucket held at that step: DDP rebuilds its buckets after the
first iteration, so the layout is read from the bucket on every call.
"""
from __future__ import annotations

import atexit
import fnmatch
import multiprocessing.util
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import GradstoreError
from ..keys import bucket_name
from ..store import Store, open_store
from .buffers import HostBufferPool
from .writer import BucketWriter, Pending

WHEN = ("before", "after")
ON_FULL = ("block", "drop")


class CaptureError(GradstoreError):
    """Storing captured gradients failed (the cause is chained), or a bucket could not be read."""


@dataclass(frozen=True)
class _Layout:
    """What one bucket holds: the selected parameters and where they sit in its flat buffer."""

    dtype: torch.dtype
    numel: int                                         # of the whole bucket buffer
    modules: tuple[tuple[str, tuple[int, ...], int, int], ...]   # name, shape, src offset, numel
    whole: bool                                        # every parameter selected, in order

    @property
    def selected_numel(self) -> int:
        return sum(m[3] for m in self.modules)


@dataclass
class CaptureStats:
    captured: int = 0        # buckets handed to the writer
    dropped: int = 0         # buckets skipped because every host buffer was taken (on_full="drop")
    written: int = 0         # buckets stored
    tensors: int = 0
    bytes: int = 0           # gradient bytes stored
    not_encodable: int = 0   # tensors a codec could not represent (raw stored anyway)


_OPEN: "weakref.WeakSet[GradientCapture]" = weakref.WeakSet()


def _close_all() -> None:
    """A capture left open at exit still stores what it captured."""
    for capture in list(_OPEN):
        try:
            capture.close()
        except Exception as exc:  # exit goes on; say why data may be missing
            warnings.warn(f"gradstore capture: closing at exit failed: {exc}")


atexit.register(_close_all)
# multiprocessing children (torch.multiprocessing.spawn) skip atexit but run these finalizers
multiprocessing.util.Finalize(None, _close_all, exitpriority=10)


def _int_set(name: str, value) -> frozenset[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return frozenset([value])
    try:
        return frozenset(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be an int or an iterable of ints, not {value!r}") from None


class GradientCapture:
    """Store every selected DDP bucket of this rank, per step, into a gradstore store.

    ``path`` is a store path (opened with mode "a" in this rank's namespace)
    or an open store-like object with ``write_bucket`` (left open at close; with
    ``codecs`` and ``raw=True``, a gradstore Store).
    Options: ``every`` N steps, ``ranks``, ``buckets`` (indices), ``modules``
    (globs over parameter names), ``when`` "before" (local gradients, the
    default) or "after" the communication, ``codecs`` (specs stored as
    variants next to each tensor), ``max_pending`` host buffers in flight and
    ``on_full`` "block" (wait for the writer) or "drop" (skip the bucket,
    counted in ``stats.dropped``). ``raw=False`` stores only the ``codecs``
    variants, not the tensors (``Store.write_encoded``: a tensor no codec
    can represent is stored as a tensor, and counted in ``stats.not_encodable``).
    ``direct_io`` (default True): the store's segments are written with
    O_DIRECT, past the page cache, whose fresh pages can cost the training
    step more CPU time than the copy itself (gradstore.direct); False writes
    through the page cache.  It applies to a store opened from ``path``.
    """

    def __init__(self, path, *, rank: int | None = None, every: int = 1,
                 ranks: Iterable[int] | int | None = None, buckets: Iterable[int] | int | None = None,
                 modules: str | Iterable[str] | None = None, when: str = "before",
                 codecs: str | Iterable[str] | None = None, max_pending: int = 4,
                 on_full: str = "block", auto_step: bool = True, raw: bool = True,
                 segment_size: int | str | None = None, fsync: bool = False, direct_io: bool = True):
        if when not in WHEN:
            raise ValueError(f"when must be 'before' or 'after', not {when!r}")
        if on_full not in ON_FULL:
            raise ValueError(f"on_full must be 'block' or 'drop', not {on_full!r}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, not {every!r}")
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.rank = rank
        self.every = every
        self.ranks = _int_set("ranks", ranks)
        self.buckets = _int_set("buckets", buckets)
        self.modules = [modules] if isinstance(modules, str) else (None if modules is None else list(modules))
        self.when = when
        self.codecs = [codecs] if isinstance(codecs, str) else list(codecs or ())
        self.on_full = on_full
        self.auto_step = auto_step
        self.epoch = 0
        self.current_step = 0
        self.stats = CaptureStats()
        self._layouts: dict[tuple, _Layout] = {}
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._warned_drop = False
        self.store = None
        self._owns_store = False
        self._writer: BucketWriter | None = None
        self._pool = HostBufferPool(max_pending, pin=False)
        self._hook_state = None
        self.active = self.ranks is None or rank in self.ranks
        if self.codecs:  # a bad spec fails here, not in the writer thread
            from ..codecs.registry import get_codec
            self.codecs = [get_codec(spec).spec for spec in self.codecs]
        if not raw:   # the writer's write_encoded would refuse them, in its thread
            from ..encoded import codecs_of
            try:
                codecs_of(self.codecs)
            except ValueError as exc:
                raise ValueError(f"raw=False: {exc}; give codecs=[...], e.g. "
                                 "'eg:k=auto,scale=1e6'") from None
        self.raw = bool(raw)
        if self.active:
            if hasattr(path, "write_bucket"):
                if self.codecs and self.raw and not isinstance(path, Store):
                    raise TypeError("codecs with raw=True store variants next to the tensors, "
                                    "which needs a gradstore store (a path or gradstore.open(...)), "
                                    f"not {type(path).__name__}")
                self.store = path
            else:
                self.store = open_store(os.fspath(path), "a", rank=rank, segment_size=segment_size,
                                        fsync=fsync, direct_io=direct_io)
                self._owns_store = True
            self._writer = BucketWriter(self.store, self._pool, self.codecs, raw=self.raw)
        _OPEN.add(self)

    # -- where training is ---------------------------------------------------

    def step(self, epoch: int | None = None, step: int | None = None) -> None:
        """Say where training is; the buckets captured from now on carry this epoch and step."""
        with self._lock:
            if epoch is not None:
                self.epoch = int(epoch)
            if step is not None:
                self.current_step = int(step)

    # -- the hook --------------------------------------------------------------

    def register(self, ddp_model, hook: Callable | None = None, state=None) -> None:
        """Register the capturing hook on ``ddp_model``; ``hook(state, bucket)`` does the communication.

        Without ``hook``, the default all-reduce (averaging over ranks) is used,
        with ``state`` as its process group (None: the default group). A state
        that keeps statistics (``stats_name`` and ``records``, as
        gradstore.torch.EGHookState) has them written into the store at
        close, as ``hooks/<stats_name>-r<rank>.csv``, for ``gradstore report``.
        """
        module = getattr(ddp_model, "module", ddp_model)
        if any(p.device.type == "cuda" for p in module.parameters()):
            self._pool.pin = True   # before the first buffer: device-to-host copies run async
        self._names = {id(p): name for name, p in module.named_parameters()}
        inner = hook
        if inner is None:
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
            inner = allreduce_hook
        self._inner = inner
        self._hook_state = state
        ddp_model.register_comm_hook(state, self._hook)

    def _hook(self, state, bucket):
        self._check_writer()
        with self._lock:
            epoch, step = self.epoch, self.current_step
            if self.auto_step and bucket.is_last():
                self.current_step += 1
        index = bucket.index()
        layout = self._layout(bucket) if self._wanted(index, step) else None
        if layout is not None and self.when == "before":
            # the default hook divides the buffer in place: copy first
            self._capture(layout, bucket.buffer(), bucket_name(self.rank, epoch, step, index))
        fut = self._inner(state, bucket)
        if layout is not None and self.when == "after":
            name = bucket_name(self.rank, epoch, step, index)

            def after(f):
                value = f.value()
                value = value[0] if isinstance(value, (list, tuple)) else value
                self._capture(layout, value, name)
                return value
            fut = fut.then(after)
        return fut

    def _wanted(self, index: int, step: int) -> bool:
        return (self.active and not self._closed and step % self.every == 0
                and (self.buckets is None or index in self.buckets))

    def _layout(self, bucket) -> _Layout | None:
        """The bucket's parameters, named; None when none is selected. Cached per exact layout."""
        params = bucket.parameters()
        buffer = bucket.buffer()
        ident = (bucket.index(), buffer.numel(), tuple(id(p) for p in params))
        layout = self._layouts.get(ident)
        if layout is None:
            layout = self._layouts[ident] = self._build_layout(params, buffer)
        return layout if layout.modules else None

    def _build_layout(self, params, buffer) -> _Layout:
        modules, offset = [], 0
        for i, p in enumerate(params):
            name = self._names.get(id(p), f"param_{i}")
            n = p.numel()
            if self.modules is None or any(fnmatch.fnmatchcase(name, g) for g in self.modules):
                modules.append((name, tuple(p.shape), offset, n))
            offset += n
        if offset != buffer.numel():
            raise CaptureError(f"a DDP bucket of {buffer.numel()} elements holds parameters of "
                               f"{offset}: not a dense, packed bucket")
        return _Layout(buffer.dtype, buffer.numel(), tuple(modules), len(modules) == len(params))

    def _capture(self, layout: _Layout, flat: torch.Tensor, name: str) -> None:
        """Copy the selected gradients out of ``flat`` into a host buffer and queue it."""
        itemsize = flat.element_size()
        nbytes = layout.selected_numel * itemsize
        buf = self._pool.acquire(nbytes, block=self.on_full == "block")
        if buf is None:
            self._drop(name)
            return
        try:
            on_gpu = flat.device.type != "cpu"
            dst = buf[:nbytes].view(layout.dtype)
            flat = flat.detach().reshape(-1)
            if layout.whole:
                dst.copy_(flat, non_blocking=on_gpu)
                modules = [(m[0], m[1], m[2]) for m in layout.modules]
            else:
                modules, at = [], 0
                for module, shape, src, n in layout.modules:
                    dst[at:at + n].copy_(flat[src:src + n], non_blocking=on_gpu)
                    modules.append((module, shape, at))
                    at += n
            event = None
            if on_gpu:
                event = torch.cuda.Event()
                event.record()
        except BaseException:
            self._pool.release(buf)
            raise
        with self._lock:
            self.stats.captured += 1
        self._writer.put(Pending(name, layout.dtype, modules, buf, nbytes, event))

    def _drop(self, name: str) -> None:
        with self._lock:
            self.stats.dropped += 1
            first = not self._warned_drop
            self._warned_drop = True
        if first:
            warnings.warn(f"gradstore capture: writer behind, dropped bucket {name} "
                          f"(on_full='drop'; drops are counted in capture.stats.dropped)",
                          RuntimeWarning, stacklevel=3)

    def _check_writer(self) -> None:
        if self._writer is not None and self._writer.error is not None:
            raise CaptureError(f"storing captured gradients failed: {self._writer.error}"
                               ) from self._writer.error

    # -- end -----------------------------------------------------------------

    def flush(self) -> None:
        """Return once everything captured so far is stored."""
        if self._writer is not None:
            self._writer.flush()
            self._sync_stats()
            self._check_writer()

    def _sync_stats(self) -> None:
        w = self._writer.stats
        self.stats.written, self.stats.tensors, self.stats.bytes = w.buckets, w.tensors, w.bytes
        self.stats.not_encodable = len(w.not_encodable)

    def close(self) -> None:
        """Store everything captured, then close the store (if capture opened it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        if self._writer is None:
            return
        try:
            self._writer.flush()
            self._writer.close()
            self._sync_stats()
            self._pool.clear()
        finally:
            if self._owns_store:
                self.store.close()
            self._write_hook_stats()
        if self.stats.dropped:
            warnings.warn(f"gradstore capture: rank {self.rank} dropped {self.stats.dropped} "
                          f"of {self.stats.dropped + self.stats.captured} buckets (writer behind)",
                          RuntimeWarning, stacklevel=2)
        self._check_writer()

    def _write_hook_stats(self) -> None:
        """The hook state's records, into the store (a failure is a warning: gradients come first)."""
        state, where = self._hook_state, getattr(self.store, "path", None)
        name = getattr(state, "stats_name", None)
        if name is None or where is None or not hasattr(state, "records"):
            return
        from ..hookstats import write_to_store
        try:
            write_to_store(state.records, where, name, self.rank)
        except (OSError, ValueError) as exc:
            warnings.warn(f"gradstore capture: the {name} hook's statistics were not written "
                          f"into the store: {exc}", RuntimeWarning, stacklevel=3)

    def __enter__(self) -> "GradientCapture":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # training failed: still store what was captured, and let its error through
            self.close()
        except Exception as close_exc:
            warnings.warn(f"gradstore capture: close after {exc_type.__name__} failed: {close_exc}")

    def __repr__(self) -> str:
        return (f"<GradientCapture rank={self.rank} epoch={self.epoch} step={self.current_step} "
                f"captured={self.stats.captured} dropped={self.stats.dropped}>")
