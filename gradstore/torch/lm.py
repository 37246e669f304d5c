"""A small transformer language model trained on generated text: real gradients without a download.

The model is a Llama built from a ``transformers`` config (random init); the
text comes from a made-up language (Zipf-distributed words that follow a
random bigram chain), so the loss really falls and the gradients look like
those of language-model training: large embedding and projection matrices,
tiny norm vectors, values spread over many orders of magnitude.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class LMConfig:
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 344
    vocab: int = 2048
    seq: int = 64
    batch: int = 8          # sequences per rank per step
    dtype: str = "float32"  # or "bfloat16": parameters and gradients in bf16
    lr: float = 1e-3
    seed: int = 0


def build_model(cfg: LMConfig) -> torch.nn.Module:
    """A randomly initialised LlamaForCausalLM, the same on every rank (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=cfg.vocab, hidden_size=cfg.hidden,
                         intermediate_size=cfg.intermediate, num_hidden_layers=cfg.layers,
                         num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
                         max_position_embeddings=max(cfg.seq, 128), tie_word_embeddings=False)
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    return model.to(getattr(torch, cfg.dtype))


def _words(vocab: int, rng: np.random.Generator) -> list[str]:
    """``vocab`` distinct made-up words, shortest first (frequent words are short, as in real text)."""
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "he", "ji"]
    out, seen = [], set()
    while len(out) < vocab:
        w = "".join(rng.choice(syllables, rng.integers(1, 7)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return sorted(out, key=len)


def generate_text(vocab: int, n_tokens: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Token ids of a made-up language, and its words (id -> word)."""
    rng = np.random.default_rng(seed)
    words = _words(vocab, rng)
    zipf = 1.0 / np.arange(1, vocab + 1)
    # each word has a few likely successors, drawn by word frequency
    succ = np.stack([rng.choice(vocab, 8, p=zipf / zipf.sum()) for _ in range(vocab)])
    ids = np.empty(n_tokens, np.int64)
    ids[0] = 0
    follow = rng.random(n_tokens) < 0.8
    pick = rng.integers(0, 8, n_tokens)
    free = rng.choice(vocab, n_tokens, p=zipf / zipf.sum())
    for i in range(1, n_tokens):
        ids[i] = succ[ids[i - 1], pick[i]] if follow[i] else free[i]
    return ids, words


def batches(cfg: LMConfig, rank: int, world_size: int, steps: int) -> Iterator[torch.Tensor]:
    """``steps`` batches of token ids for ``rank``: each rank reads its own part of the text."""
    per_step = cfg.batch * cfg.seq
    ids, _ = generate_text(cfg.vocab, per_step * world_size * steps + 1, cfg.seed)
    for s in range(steps):
        start = (s * world_size + rank) * per_step
        yield torch.from_numpy(ids[start:start + per_step].reshape(cfg.batch, cfg.seq))


def train(ddp_model: torch.nn.Module, cfg: LMConfig, rank: int, world_size: int, steps: int,
          before_step: Callable[[int], None] | None = None,
          after_step: Callable[[int, float, float], None] | None = None,
          ) -> tuple[list[float], list[float]]:
    """Plain DDP training; returns (seconds per step, loss per step).

    ``before_step(step)`` and ``after_step(step, loss, seconds)`` are called around each step.
    """
    opt = torch.optim.AdamW(ddp_model.parameters(), lr=cfg.lr)
    times, losses = [], []
    for step, x in enumerate(batches(cfg, rank, world_size, steps)):
        if before_step is not None:
            before_step(step)
        t0 = time.perf_counter()
        loss = ddp_model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(step, losses[-1], times[-1])
    return times, losses
