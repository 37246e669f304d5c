"""EG compression in the training loop: a DDP communication hook that sends quantized, EG-coded gradients.

    state = EGHookState(scale=1e6, k="auto")          # error feedback on by default
    ddp.register_comm_hook(state, eg_compress_hook)
    ...                                               # train
    state.compression_stats()                         # totals, as PowerSGD's, and per-bucket records

It follows ``torch.distributed.algorithms.ddp_comm_hooks``: a state object
holding the process group and what persists between steps (here the
error-feedback residuals and the statistics), and a hook ``(state, bucket)``
returning a future of the bucket's averaged tensor. On every rank, for each bucket:

1. error feedback (EF-SGD): the residual kept for this bucket index is added;
2. the bucket is quantized and coded by the ``eg`` codec, q = rint(x * scale);
3. one int64 per rank is all-gathered: the payload's length, or -1 when the
   bucket holds NaN/Inf, or -2 when a value is beyond the codec's range;
4. if every rank could code its bucket, the payloads, padded to the longest,
   are all-gathered; each is decoded (to the bucket's dtype, float32 for half
   types), they are summed in float64 in rank order and divided by the world
   size, so every rank writes the very same bits. If any rank could not, every
   rank does the exact all-reduce of torch's ``allreduce_hook`` for this
   bucket, and counts it as a fallback: a NaN stays a NaN, never a silent wrong value;
5. the new residual is what quantization dropped: x - decode(own payload).

The hook does its collectives itself, synchronously, and returns a completed
future: the coding is CPU work in the backward pass, so nothing would overlap
on a CPU anyway, and on a GPU the bucket makes a trip through host memory.
DDP rebuilds its buckets after the first step, so residuals are kept by
bucket index and dropped when that bucket's size changes.
"""

import time

import numpy as np
import torch
import torch.distributed as dist

from ..codecs.codec import positive_real
from ..codecs.registry import codec_class
from ..errors import NotEncodableError
from ..hookstats import BucketRecord, Totals, as_row, write_stats

NONFINITE, OUT_OF_RANGE = -1, -2      # what a rank says instead of a length when it cannot code
_WHY = {NONFINITE: "nonfinite", OUT_OF_RANGE: "range"}
LENGTH_BYTES = 8                       # the int64 each rank sends in the length exchange


class EGHookState:
    """What :func:`eg_compress_hook` needs and keeps between steps.

    Registered through ``GradientCapture.register(ddp, eg_compress_hook,
    state)``, its records go into the store at close (``hooks/eg-r<rank>.csv``).

    ``scale`` (or ``error_bound``, the largest quantization error, giving
    scale = 0.5 / error_bound), ``k``, ``sign``, ``remap`` and ``zeros`` are
    the ``eg`` codec's parameters (see gradstore.codecs.eg). ``error_feedback``
    carries each rank's quantization residual into the next step's bucket.
    ``keep_records`` keeps one :class:`BucketRecord` per bucket per step
    (totals are kept either way).
    """

    stats_name = "eg"   # GradientCapture writes the records as hooks/eg-r<rank>.csv

    def __init__(self, process_group: dist.ProcessGroup | None = None, *, scale: float | None = None,
                 error_bound: float | None = None, k: int | str = 0, sign: str = "bit",
                 remap: str | None = None, zeros: str = "plain", error_feedback: bool = True,
                 keep_records: bool = True):
        if scale is not None and error_bound is not None:
            raise ValueError("give scale or error_bound, not both")
        if error_bound is not None:
            try:
                scale = 0.5 / positive_real(error_bound)
            except ValueError as exc:
                raise ValueError(f"error_bound must be a finite number > 0, not {error_bound!r} "
                                 f"({exc})") from None
        self.codec = codec_class("eg")(k=k, scale=1e6 if scale is None else scale, sign=sign,
                                       remap=remap or "none", zeros=zeros)
        self.process_group = process_group
        self.error_feedback = bool(error_feedback)
        self.keep_records = bool(keep_records)
        self.iter = 0                                  # steps done, as PowerSGDState.iter
        self.residuals: dict[int, torch.Tensor] = {}   # bucket index -> what quantization dropped
        self.records: list[BucketRecord] = []
        self.totals = Totals()

    @property
    def scale(self) -> float:
        return self.codec.params["scale"]

    @property
    def spec(self) -> str:
        """The eg codec spec the hook codes with."""
        return self.codec.spec

    def compression_stats(self) -> dict:
        """Totals over every bucket so far, as PowerSGD's ``compression_stats()``, and the records.

        Keys: ``compress_rate`` (bytes before / bytes after, PowerSGD's
        sense), ``wire_ratio`` (its inverse), ``bytes_before``,
        ``bytes_after``, ``payload_bytes``, ``bits_per_element``, ``numel``,
        ``encode_s``, ``comm_s``, ``decode_s``, ``buckets``, ``fallbacks``,
        ``fallback_nonfinite``, ``fallback_range``, ``steps`` and ``records``
        (a list of dicts, one per bucket per step; empty without keep_records).
        """
        out = self.totals.as_dict()
        out["steps"] = self.iter
        out["records"] = [as_row(r) for r in self.records]
        return out

    def write_stats(self, path, **extra) -> str:
        """Write the records as CSV (``.csv``) or JSON with totals (any other name); see gradstore.hookstats."""
        return write_stats(self.records, path, sums=self.totals.as_dict(), spec=self.spec,
                           steps=self.iter, **extra)

    def _record(self, record: BucketRecord, last: bool) -> None:
        self.totals.add(record)
        if self.keep_records:
            self.records.append(record)
        if last:
            self.iter += 1

    def __repr__(self) -> str:
        return (f"<EGHookState {self.spec} error_feedback={self.error_feedback} "
                f"iter={self.iter} buckets={self.totals.sums['buckets']}>")


def _work_tensor(buf: torch.Tensor) -> torch.Tensor:
    """The bucket as a CPU float32/float64 tensor: the buffer itself when it already is one."""
    x = buf.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x.cpu().contiguous()


def eg_compress_hook(state: EGHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average the bucket over ranks by exchanging EG-coded, quantized gradients (see the module doc)."""
    if not isinstance(state, EGHookState):
        raise TypeError(f"eg_compress_hook needs an EGHookState as its state, not {state!r}: "
                        f"ddp.register_comm_hook(EGHookState(...), eg_compress_hook)")
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    buf = bucket.buffer()
    index, numel = bucket.index(), buf.numel()

    t0 = time.perf_counter()
    x = _work_tensor(buf)
    residual = state.residuals.get(index)
    if state.error_feedback and residual is not None and residual.numel() == numel:
        x.add_(residual)               # in the bucket's own memory when x is the buffer
    values = x.numpy()
    payload, code = b"", 0
    try:
        payload = state.codec.encode(values).payload
        code = len(payload)
    except NotEncodableError:
        code = NONFINITE if not torch.isfinite(x).all() else OUT_OF_RANGE
    t1 = time.perf_counter()

    codes = _all_gather_lengths(code, group, world)
    if min(codes) < 0:
        why = _WHY[NONFINITE] if NONFINITE in codes else _WHY[OUT_OF_RANGE]
        if x.data_ptr() != buf.data_ptr():
            buf.copy_(x)               # the residual goes out exactly, with the gradient
        dist.all_reduce(buf.div_(world), group=group)   # allreduce_hook's arithmetic
        state.residuals.pop(index, None)
        t2 = time.perf_counter()
        state._record(BucketRecord(
            step=state.iter, bucket=index, numel=numel, bytes_before=numel * buf.element_size(),
            payload_bytes=0, gathered_bytes=0,
            bytes_after=LENGTH_BYTES + numel * buf.element_size(), encode_s=t1 - t0,
            comm_s=t2 - t1, decode_s=0.0, fallback=why), bucket.is_last())
        return _done(buf)

    payloads = _all_gather_payloads(payload, codes, group)
    t2 = time.perf_counter()
    own = dist.get_rank(group)
    total = np.zeros(numel, np.float64)
    for r, p in enumerate(payloads):
        decoded = state.codec.decode(p, values.dtype, values.shape)
        total += decoded
        if r == own:
            mine = decoded
    if state.error_feedback:
        state.residuals[index] = x - torch.from_numpy(mine)   # before x (maybe buf) is overwritten
    buf.copy_(torch.from_numpy((total / world).astype(values.dtype, copy=False)))
    t3 = time.perf_counter()
    state._record(BucketRecord(
        step=state.iter, bucket=index, numel=numel, bytes_before=numel * buf.element_size(),
        payload_bytes=code, gathered_bytes=sum(codes), bytes_after=LENGTH_BYTES + max(codes),
        encode_s=t1 - t0, comm_s=t2 - t1, decode_s=t3 - t2), bucket.is_last())
    return _done(buf)


def _done(tensor: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(tensor)
    return fut


def _all_gather_lengths(code: int, group, world: int) -> list[int]:
    """Every rank's payload length (or its negative reason for not coding), in rank order."""
    mine = torch.tensor([code], dtype=torch.int64)
    out = [torch.empty(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(out, mine, group=group)
    return [int(t) for t in out]


def _all_gather_payloads(payload: bytes, lengths: list[int], group) -> list[memoryview]:
    """Every rank's payload, in rank order: all-gathered padded to the longest, then cut to length."""
    longest = max(lengths)
    send = torch.zeros(longest, dtype=torch.uint8)
    send[:len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    out = [torch.empty(longest, dtype=torch.uint8) for _ in lengths]
    dist.all_gather(out, send, group=group)
    return [memoryview(t.numpy())[:n] for t, n in zip(out, lengths)]
