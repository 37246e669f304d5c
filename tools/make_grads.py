"""Real gradient buckets for the benchmarks: capture a short DDP training run, fp32 and bf16.

The same training (gloo, 2 ranks on 127.0.0.1, a Llama from a transformers
config, random init, generated text) runs twice: once in float32 and once
with the model in bfloat16. Every bucket of every rank at every step is
captured into

  OUT/fp32.gs   OUT/bf16.gs             gradstore stores
  OUT/pt/fp32/R_..._E_..._S_..._B_....pt  with --pt: one torch.save'd {name: tensor} per bucket
  OUT/pt/bf16/...                         (the converter's input format)

Real gradients differ from synthetic Gaussian ones in what costs time and
space: values over 6+ orders of magnitude, tens of thousands of distinct
quantized values per tensor, many tiny bias and norm tensors.

    python tools/make_grads.py grads/            # ~400 MB: hidden 256, 4 layers, 5 steps, 2 ranks
    python tools/make_grads.py grads/ --steps 2 --hidden 128 --layers 2 --pt
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path


def rank_main(rank: int, world_size: int, path: str, cfg, steps: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gradstore.torch import GradientCapture
    from gradstore.torch.lm import build_model, train
    ddp = DDP(build_model(cfg))
    with GradientCapture(path) as capture:
        capture.register(ddp)
        _, losses = train(ddp, cfg, rank, world_size, steps)
    return {"losses": losses, "bytes": capture.stats.bytes, "buckets": capture.stats.written}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output directory (must not hold fp32.gs / bf16.gs yet)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--pt", action="store_true", help="also export every bucket as a .pt file")
    args = ap.parse_args()

    from gradstore.torch.ddp import spawn
    from gradstore.torch.lm import LMConfig
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for dtype in args.dtypes.split(","):
        short = {"float32": "fp32", "bfloat16": "bf16"}[dtype]
        cfg = replace(LMConfig(), hidden=args.hidden, layers=args.layers, vocab=args.vocab,
                      intermediate=int(args.hidden * 2.6875), heads=max(1, args.hidden // 64),
                      kv_heads=max(1, args.hidden // 256), dtype=dtype)
        store = out / f"{short}.gs"
        if store.exists():
            raise SystemExit(f"make_grads: {store} exists; remove it or pick another directory")
        t0 = time.perf_counter()
        res = spawn(rank_main, 2, str(store), cfg, args.steps)
        total = sum(r["bytes"] for r in res)
        print(f"{store}: {sum(r['buckets'] for r in res)} buckets, {total / 2**20:.1f} MiB of "
              f"{dtype} gradients, loss {res[0]['losses'][0]:.2f} -> {res[0]['losses'][-1]:.2f}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        if args.pt:
            from gradstore.convert.export import export
            report = export(str(store), out / "pt" / short, format="pt")
            print(f"{out / 'pt' / short}: {len(report.files)} .pt files, {report.tensors} tensors",
                  flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
