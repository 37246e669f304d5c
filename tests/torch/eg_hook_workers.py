"""Rank functions for the EG hook tests, run by gradstore.torch.ddp.spawn (gloo, CPU, 127.0.0.1).

Each scenario trains the capture tests' small model for a few steps with
``eg_compress_hook`` behind a recording wrapper, and saves per rank what the
test needs to redo the hook's arithmetic on its own: the bucket as DDP
handed it over, the residual before and after, the averaged result and the
hook's statistics record, call by call; and the final parameters.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from capture_workers import batch, make_model
from gradstore.torch import EGHookState, GradientCapture, eg_compress_hook
from gradstore.hookstats import as_row

STEPS = 4
SPEC = dict(scale=1e4, k=0)   # coarse: quantization visibly changes the average


def _clone(t):
    return None if t is None else t.detach().clone()


def recording(state: EGHookState, calls: list, rank: int, inject: dict | None = None):
    """eg_compress_hook, noting each call; ``inject[(step, rank)] = value`` puts value into
    element 0 of the first bucket of that step on that rank, before the hook sees it."""
    def hook(hook_state, bucket):
        step, index = state.iter, bucket.index()
        if inject and (step, rank) in inject and bucket.is_last():
            bucket.buffer()[0] = inject[(step, rank)]
        call = {"step": step, "index": index, "before": _clone(bucket.buffer()),
                "residual_before": _clone(state.residuals.get(index))}
        fut = eg_compress_hook(hook_state, bucket)
        call["after"] = _clone(fut.value())
        call["residual_after"] = _clone(state.residuals.get(index))
        call["record"] = as_row(state.records[-1])
        calls.append(call)
        return fut
    return hook


def train(rank: int, state: EGHookState, *, inject=None, capture_path=None,
          steps: int = STEPS, dtype=torch.float32, stats_path: str | None = None) -> dict:
    model = make_model().to(dtype)
    ddp = DDP(model, bucket_cap_mb=0.01)   # ~10 KB buckets: several per step, rebuilt after step 0
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    out = {"calls": [], "grads": []}
    hook = recording(state, out["calls"], rank, inject)
    capture = None
    if capture_path is not None:
        capture = GradientCapture(capture_path, when="after")
        capture.register(ddp, hook=hook, state=state)
    else:
        ddp.register_comm_hook(state, hook)
    for step in range(steps):
        x, y = batch(rank, step)
        nn.functional.mse_loss(ddp(x), y.to(dtype)).backward()
        out["grads"].append({n: p.grad.clone() for n, p in model.named_parameters()})
        if not any(step == s for s, _ in (inject or {})):   # as a GradScaler skips a bad step
            opt.step()
        opt.zero_grad(set_to_none=True)
    if capture is not None:
        capture.close()
    if stats_path is not None:
        state.write_stats(stats_path, rank=rank)
    stats = state.compression_stats()
    out["totals"] = {k: v for k, v in stats.items() if k != "records"}
    out["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    return out


def scenarios(rank: int, world_size: int, root: str) -> None:
    """Every scenario of the tests, in one spawn (start-up is the slow part)."""
    out = {
        "ef": train(rank, EGHookState(**SPEC), stats_path=f"{root}/ef_rank{rank}.json"),
        "no_ef": train(rank, EGHookState(**SPEC, error_feedback=False)),
        # step 1: an Inf on rank 1; step 2: a value beyond the codec's range on rank 0
        "fallback": train(rank, EGHookState(**SPEC),
                          inject={(1, 1): float("inf"), (2, 0): 1e16}),
        "bf16": train(rank, EGHookState(**SPEC), dtype=torch.bfloat16, steps=2),
        "capture": train(rank, EGHookState(scale=1e6, k="auto"), capture_path=f"{root}/capture.gs",
                         steps=2),
    }
    dist.barrier()
    torch.save(out, f"{root}/rank{rank}.pt")
