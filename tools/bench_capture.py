"""Step time of DDP training with no capture, the torch.save hook, and gradstore capture, side by side.

The same CPU DDP training (gloo, 2 ranks on 127.0.0.1, a Llama from a
transformers config trained on generated text) runs four ways in one
run. Each rank holds identical DDP models, one per way:

  none     DDP as is (no communication hook)
  save     the old way: a hook that torch.save()s a {name: gradient} dict per bucket
           to R_{r}_E_{e}_S_{s}_B_{b}.pt, then all-reduces
  capture  gradstore.torch.GradientCapture (default all-reduce; direct I/O, the default)
  buffered the same with direct_io=False: its writes go through the page cache
  loop     with --loop: the hook as often found in the wild, whose torch.save sits inside
           the per-parameter loop, so each bucket file is rewritten once per parameter

and trains them in turns, ``--block`` steps each, for ``--rounds`` rounds
(the order rotates every round), so a slow phase of a shared machine hits
all ways alike. A capture block's time ends once its writer has stored
everything (``flush()``), so no work is left outside the clock. Printed:
seconds per step per way, the ratios, and bytes on disk against gradient
bytes. Results depend on the machine; run it several times.

    python tools/bench_capture.py                 # a few minutes on 2 cores
    python tools/bench_capture.py --hidden 256 --layers 2 --rounds 2
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

MODES = ("none", "save", "capture", "buffered")
CAPTURES = ("capture", "buffered")


def save_hook(directory: str, names: dict, rank: int, counter: list):
    """The hook researchers use today: one torch.save per bucket inside the hook."""
    import torch
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):
        grads = {names[id(p)]: g for p, g in zip(bucket.parameters(), bucket.gradients())}
        torch.save(grads, f"{directory}/R_{rank}_E_0_S_{counter[0]}_B_{bucket.index()}.pt")
        if bucket.is_last():
            counter[0] += 1
        return allreduce_hook(state, bucket)
    return hook


def loop_save_hook(directory: str, names: dict, rank: int, counter: list):
    """The same, with the save inside the per-parameter loop."""
    import torch
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):
        grads = {}
        for p, g in zip(bucket.parameters(), bucket.gradients()):
            grads[names[id(p)]] = g
            torch.save(grads, f"{directory}/R_{rank}_E_0_S_{counter[0]}_B_{bucket.index()}.pt")
        if bucket.is_last():
            counter[0] += 1
        return allreduce_hook(state, bucket)
    return hook


def rank_main(rank: int, world_size: int, root: str, cfg, rounds: int, block: int,
              warmup: int, modes: tuple[str, ...]) -> dict:
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gradstore.torch import GradientCapture
    from gradstore.torch.lm import batches, build_model

    ways, captures = {}, {}
    for mode in modes:
        model = build_model(cfg)
        ddp = DDP(model)
        if mode in ("save", "loop"):
            names = {id(p): n for n, p in model.named_parameters()}
            os.makedirs(f"{root}/{mode}", exist_ok=True)
            make = save_hook if mode == "save" else loop_save_hook
            ddp.register_comm_hook(None, make(f"{root}/{mode}", names, rank, [0]))
        elif mode in CAPTURES:
            captures[mode] = GradientCapture(f"{root}/{mode}.gs", direct_io=mode == "capture")
            captures[mode].register(ddp)
        ways[mode] = (ddp, torch.optim.AdamW(ddp.parameters(), lr=cfg.lr))
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    data = list(batches(cfg, rank, world_size, warmup + rounds * block))
    seconds: dict[str, list[float]] = {m: [] for m in modes}

    def run(mode: str, xs) -> float:
        ddp, opt = ways[mode]
        t0 = time.perf_counter()
        for x in xs:
            ddp(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if mode in captures:
            captures[mode].flush()
        return time.perf_counter() - t0

    for mode in modes:
        run(mode, data[:warmup])
    for r in range(rounds):
        xs = data[warmup + r * block:warmup + (r + 1) * block]
        k = r % len(modes)
        for mode in modes[k:] + modes[:k]:
            seconds[mode].append(run(mode, xs) / block)
    for capture in captures.values():
        capture.close()
    return {"seconds": seconds, "grad_bytes": grad_bytes * (warmup + rounds * block)}


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="sequences per rank per step")
    ap.add_argument("--rounds", type=int, default=5, help="each way trains once per round")
    ap.add_argument("--block", type=int, default=4, help="steps per way per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per way first")
    ap.add_argument("--loop", action="store_true",
                    help="also time the hook whose torch.save sits inside the per-parameter loop")
    ap.add_argument("--dir", help="scratch directory (default: a temporary one, removed)")
    args = ap.parse_args()

    from gradstore.torch.ddp import spawn
    from gradstore.torch.lm import LMConfig
    cfg = replace(LMConfig(), hidden=args.hidden, layers=args.layers, vocab=args.vocab,
                  intermediate=int(args.hidden * 2.6875), heads=max(1, args.hidden // 64),
                  kv_heads=max(1, args.hidden // 256), seq=args.seq, batch=args.batch)
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="bench_capture-"))
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"model: Llama hidden {cfg.hidden}, {cfg.layers} layers, vocab {cfg.vocab}; "
          f"{cfg.batch}x{cfg.seq} tokens per rank per step; 2 ranks (gloo, CPU, 1 thread each); "
          f"{args.rounds} rounds of {args.block} steps per way, after {args.warmup} warm-up step(s)",
          flush=True)
    try:
        modes = MODES + ("loop",) if args.loop else MODES
        res = spawn(rank_main, 2, str(scratch), cfg, args.rounds, args.block, args.warmup, modes,
                    threads=1)
        grads = sum(r["grad_bytes"] for r in res)
        sizes = {"save": disk_bytes(scratch / "save"),
                 **{m: disk_bytes(scratch / f"{m}.gs") for m in CAPTURES}}
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)
    # per round, the slower rank's time (ranks wait for each other at every all-reduce)
    per_round = {m: [max(r["seconds"][m][i] for r in res) for i in range(args.rounds)] for m in modes}
    med = {m: statistics.median(v) for m, v in per_round.items()}
    ratio_c = statistics.median(c / n for c, n in zip(per_round["capture"], per_round["none"]))
    ratio_s = statistics.median(s / n for s, n in zip(per_round["save"], per_round["none"]))
    ratio_sc = statistics.median(s / c for s, c in zip(per_round["save"], per_round["capture"]))
    ratio_b = statistics.median(b / n for b, n in zip(per_round["buffered"], per_round["none"]))
    print(f"\n{'way':8s} {'s/step (median of rounds)':>26s}   per round")
    for m in modes:
        print(f"{m:8s} {med[m]:26.3f}   {' '.join(f'{v:.3f}' for v in per_round[m])}")
    over_c, over_s = med["capture"] - med["none"], med["save"] - med["none"]
    print(f"\ncapture / none   {ratio_c:.3f}x step time (median of per-round ratios; target <= 1.10)")
    print(f"buffered / none  {ratio_b:.3f}x (capture through the page cache)")
    print(f"save / none      {ratio_s:.3f}x")
    print(f"save / capture   {ratio_sc:.3f}x step time (target >= 2)")
    if args.loop:
        ratio_lc = statistics.median(s / c for s, c in zip(per_round["loop"], per_round["capture"]))
        print(f"loop / capture   {ratio_lc:.3f}x step time")
    print(f"overhead per step over none: save {over_s * 1000:+.0f} ms, capture {over_c * 1000:+.0f} ms"
          + (f" (capture's is {over_s / over_c:.1f}x smaller)" if over_c > 0 and over_s > 0 else ""))
    for m, disk in sizes.items():
        print(f"{m:8s} {disk} B on disk for {grads} B of gradients: {(disk - grads) / grads:+.3%}")


if __name__ == "__main__":
    main()
