"""Run a function on N local ranks joined by gloo over 127.0.0.1: the demo's, the tools' and the tests' DDP."""
from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world_size: int, port: int, threads: int, timeout: float,
           results, args) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout))
    try:
        out = fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()
    results.put((rank, out))


def spawn(fn: Callable, world_size: int, *args, threads: int | None = None,
          timeout: float = 300) -> list:
    """``fn(rank, world_size, *args)`` in ``world_size`` spawned processes; their results by rank.

    ``fn`` must be importable (a module-level function). Each rank gets
    ``threads`` intra-op threads (default: the CPUs shared out evenly), so
    that ranks on one machine do not fight over cores; a collective waits at
    most ``timeout`` seconds for the other ranks. A failing rank raises
    ``torch.multiprocessing.ProcessRaisedException`` here.
    """
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // world_size)
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.spawn(_entry, args=(fn, world_size, free_port(), threads, timeout, results, args),
             nprocs=world_size, join=True)
    out = dict(results.get() for _ in range(world_size))
    return [out[r] for r in range(world_size)]
