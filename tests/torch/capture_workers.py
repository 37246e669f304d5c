"""Rank functions for the capture tests, run by gradstore.torch.ddp.spawn (gloo, CPU, 127.0.0.1).

Each scenario trains a small model for a few steps and saves, per rank,
what the test needs to judge the capture: the gradients the model really
had (from an independent copy of the model, and from the hook's own view of
each bucket), the bucket layouts, and the final parameters.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from gradstore.torch import GradientCapture

STEPS = 4


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(64, 32)
        self.up = nn.Linear(32, 64)
        self.norm = nn.LayerNorm(64)
        self.down = nn.Linear(64, 48)

    def forward(self, x):
        return self.down(self.norm(torch.relu(self.up(self.emb(x).mean(1)))))


def make_model() -> Net:
    torch.manual_seed(0)
    return Net()


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randint(0, 64, (8, 5), generator=g), torch.randn(8, 48, generator=g)


def local_grads(model: nn.Module, x, y) -> dict[str, torch.Tensor]:
    """The gradient this rank computes on its own batch, from a plain copy of the model."""
    ref = make_model()
    ref.load_state_dict(model.state_dict())
    nn.functional.mse_loss(ref(x), y).backward()
    return {n: p.grad.clone() for n, p in ref.named_parameters()}


def recording(inner, seen: list, names: dict):
    """A user hook that notes what each bucket holds, then communicates with ``inner``."""
    def hook(state, bucket):
        grads = {names[id(p)]: g.detach().clone()
                 for p, g in zip(bucket.parameters(), bucket.gradients())}
        seen.append((bucket.index(), grads))
        return inner(state, bucket)
    return hook


def train(rank: int, path, *, hook=None, capture_kwargs=None, steps=STEPS, fail_at=None, slow=0.0):
    """Train ``steps`` steps; capture into ``path`` unless it is None. Returns the rank's record."""
    model = make_model()
    ddp = DDP(model, bucket_cap_mb=0.01)  # ~10 KB buckets: several per step
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    record = {"ref": [], "after": [], "seen": [], "names": [n for n, _ in model.named_parameters()]}
    capture = None
    names = {id(p): n for n, p in model.named_parameters()}
    if path is not None:
        target = path if not slow else SlowStore(path, rank, slow)
        capture = GradientCapture(target, **(capture_kwargs or {}))
        capture.register(ddp, recording(hook or default_hooks.allreduce_hook, record["seen"], names))
    elif hook is not None:  # wrapped: DDP refuses torch's bf16 hook by name without NCCL
        ddp.register_comm_hook(None, recording(hook, record["seen"], names))
    try:
        for step in range(steps):
            x, y = batch(rank, step)
            record["ref"].append(local_grads(model, x, y))
            nn.functional.mse_loss(ddp(x), y).backward()
            record["after"].append({n: p.grad.clone() for n, p in model.named_parameters()})
            if fail_at == step:
                raise RuntimeError("training failed")
            opt.step()
            opt.zero_grad(set_to_none=True)
    except RuntimeError as exc:
        record["error"] = str(exc)
        if capture is not None:
            capture.__exit__(type(exc), exc, None)
    else:
        if capture is not None:
            capture.close()
    if capture is not None:
        record["stats"] = vars(capture.stats)
    record["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    return record


class SlowStore:
    """A store whose writes take ``delay`` seconds each: a slow disk."""

    def __init__(self, path, rank: int, delay: float):
        import gradstore
        self._store = gradstore.open(path, "a", rank=rank)
        self.delay = delay

    def write_bucket(self, name, tensors):
        time.sleep(self.delay)
        return self._store.write_bucket(name, tensors)

    def close(self):
        self._store.close()


def scenarios(rank: int, world_size: int, root: str) -> None:
    """Every DDP scenario of the tests, in one spawn (start-up is the slow part)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
    out = {
        "plain": train(rank, f"{root}/plain.gs"),
        "after": train(rank, f"{root}/after.gs", capture_kwargs=dict(
            when="after", every=2, modules=["up.*", "norm.weight"], ranks=[1])),
        "bf16_ref": train(rank, None, hook=bf16_compress_hook),
        "bf16": train(rank, f"{root}/bf16.gs", hook=bf16_compress_hook),
        "fail": train(rank, f"{root}/fail.gs", fail_at=2, slow=0.05),
        "encoded": train(rank, f"{root}/encoded.gs", capture_kwargs=dict(
            codecs=["eg:k=auto,scale=1e6", "fpx"], raw=False)),
        "variants": train(rank, f"{root}/variants.gs", capture_kwargs=dict(
            codecs=["eg:k=auto,scale=1e6", "fpx"])),
    }
    dist.barrier()
    torch.save(out, f"{root}/rank{rank}.pt")
