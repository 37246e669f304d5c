"""Reused host buffers for captured buckets: the only memory capture holds.

A bucket is copied out of DDP's buffer into one of at most ``limit`` host
buffers, which the writer thread hands back once the bucket is stored. The
pool is therefore the bound on capture's memory and its backpressure: when
every buffer is taken, the training step either waits (``block``) or skips
the bucket (``drop``). Buffers are reused step after step, as DDP's buckets
are, so no memory is allocated once training has settled; on a GPU they are
pinned so the device-to-host copy can run asynchronously.
"""
from __future__ import annotations

import threading

import torch


class HostBufferPool:
    """At most ``limit`` byte buffers, each lent out to one bucket at a time."""

    def __init__(self, limit: int, pin: bool = False):
        if limit < 1:
            raise ValueError(f"the buffer limit must be at least 1, not {limit}")
        self.limit = limit
        self.pin = pin
        self._free: list[torch.Tensor] = []
        self._count = 0
        self._lent_bytes = 0
        self._cond = threading.Condition()
        self.peak_lent = 0
        self.peak_bytes = 0

    def _bytes(self) -> int:
        return sum(b.numel() for b in self._free) + self._lent_bytes

    def acquire(self, nbytes: int, block: bool) -> torch.Tensor | None:
        """A buffer of at least ``nbytes`` bytes; None if all are lent and ``block`` is False."""
        with self._cond:
            while True:
                fits = [i for i, b in enumerate(self._free) if b.numel() >= nbytes]
                if fits:
                    buf = self._free.pop(min(fits, key=lambda i: self._free[i].numel()))
                    break
                if self._free:  # none is big enough: give up the largest free one for a new one
                    self._free.pop(max(range(len(self._free)), key=lambda i: self._free[i].numel()))
                    self._count -= 1
                if self._count < self.limit:
                    buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=self.pin)
                    self._count += 1
                    break
                if not block:
                    return None
                self._cond.wait()
            self._lent_bytes += buf.numel()
            self.peak_lent = max(self.peak_lent, self._count - len(self._free))
            self.peak_bytes = max(self.peak_bytes, self._bytes())
            return buf

    def release(self, buf: torch.Tensor) -> None:
        with self._cond:
            self._lent_bytes -= buf.numel()
            self._free.append(buf)
            self._cond.notify()

    def clear(self) -> None:
        """Drop the free buffers (at close)."""
        with self._cond:
            self._count -= len(self._free)
            self._free.clear()
