"""Realistic synthetic gradient runs, for demos, tests and benchmarks.

Shapes follow a Llama-style decoder; buckets are filled in reverse parameter
order up to a size cap, as DDP does; values are Laplace-distributed with a
per-module scale and a sprinkle of heavy-tail outliers, which is close to
what captured LLM gradients look like (generalized Gaussian, shape < 2).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import dtypes
from .keys import bucket_name


@dataclass(frozen=True)
class ModelShape:
    hidden: int = 512
    intermediate: int = 1376
    layers: int = 4
    vocab: int = 8000

    def modules(self) -> list[tuple[str, tuple[int, ...]]]:
        h, i = self.hidden, self.intermediate
        out = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}"
            out += [
                (f"{p}.self_attn.q_proj.weight", (h, h)),
                (f"{p}.self_attn.k_proj.weight", (h // 4, h)),
                (f"{p}.self_attn.v_proj.weight", (h // 4, h)),
                (f"{p}.self_attn.o_proj.weight", (h, h)),
                (f"{p}.mlp.gate_proj.weight", (i, h)),
                (f"{p}.mlp.up_proj.weight", (i, h)),
                (f"{p}.mlp.down_proj.weight", (h, i)),
                (f"{p}.input_layernorm.weight", (h,)),
                (f"{p}.post_attention_layernorm.weight", (h,)),
            ]
        out += [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]
        return out


def ddp_buckets(modules: list[tuple[str, tuple[int, ...]]], itemsize: int,
                bucket_bytes: int = 25 << 20) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Group modules into buckets in reverse order, capped at ``bucket_bytes`` like DDP."""
    buckets: list[list] = [[]]
    size = 0
    for name, shape in reversed(modules):
        n = int(np.prod(shape)) * itemsize
        if buckets[-1] and size + n > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append((name, shape))
        size += n
    return buckets


def gradient(rng: np.random.Generator, shape: tuple[int, ...], dtype: str = "float32",
             scale: float = 1e-4, sparsity: float = 0.0) -> np.ndarray:
    """One gradient-like tensor: Laplace body, rare outliers, optional exact zeros."""
    n = int(np.prod(shape))
    x = rng.laplace(0.0, scale, n).astype(np.float32)
    outliers = rng.random(n) < 1e-4
    x[outliers] *= 50
    if sparsity:
        x[rng.random(n) < sparsity] = 0.0
    return x.astype(dtypes.to_numpy(dtype)).reshape(shape)


def run(ranks: int = 2, epochs: int = 1, steps: int = 4, dtype: str = "bfloat16",
        model: ModelShape = ModelShape(), bucket_bytes: int = 25 << 20, seed: int = 0,
        ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(bucket name, {module: gradient}) for every rank, epoch, step and bucket."""
    itemsize = dtypes.to_numpy(dtype).itemsize
    layout = ddp_buckets(model.modules(), itemsize, bucket_bytes)
    for epoch in range(epochs):
        for step in range(steps):
            for rank in range(ranks):
                rng = np.random.default_rng([seed, rank, epoch, step])
                decay = 1.0 / (1.0 + 0.05 * (epoch * steps + step))
                for b, members in enumerate(layout):
                    tensors = {}
                    for name, shape in members:
                        scale = (1e-3 if "norm" in name else 1e-4) * decay
                        tensors[name] = gradient(rng, shape, dtype, scale)
                    yield bucket_name(rank, epoch, step, b), tensors
