"""Bytes on the wire, step time and loss of DDP training with the EG hook against torch's hooks, side by side.

The demo's training (a small Llama from a transformers config, generated
text, 2 ranks, gloo over 127.0.0.1, CPU, one thread per rank) runs four ways
in one run, from the same initial weights on the same batches:

  allreduce  DDP as is: the fp32 all-reduce
  bf16       torch's bf16_compress_hook (bf16 all-reduce)
  eg         gradstore.torch.eg_compress_hook without error feedback
  eg+ef      the same with error feedback (the residual of each step goes into the next)

Each rank holds the four models and steps them in turns, one step each,
the order rotating every step, so a slow phase of a shared machine hits all
alike. Printed per way: bytes each rank sends per step (all-reduce and bf16:
the bucket bytes, which is what a 2-rank ring all-reduce sends; eg: the
length exchange plus the payload padded to the longer rank's), the ratio to
the fp32 all-reduce, the step time (forward, backward, communication and
optimizer; step 0, with DDP's bucket rebuild and the codec's JIT start,
left out) against the all-reduce's, and the final loss (the mean over both
ranks and the last 10 steps, the same batches for every way) against the
all-reduce's.

    python tools/bench_hook.py                    # 300 steps, about a minute on 2 cores
    python tools/bench_hook.py --steps 100 --plot hook.png --stats DIR
"""
import argparse
import json
import os
import statistics
import tempfile
import time

WAYS = ("allreduce", "bf16", "eg", "eg+ef")
TAIL = 10   # final loss: mean over the last TAIL steps


def _bf16_hook():
    """torch's bf16_compress_hook under another name: DDP refuses that name unless NCCL is there,
    yet the hook itself runs on gloo."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

    def bf16(state, bucket):
        return bf16_compress_hook(state, bucket)
    return bf16


def rank_main(rank: int, world_size: int, cfg, steps: int, k, scale: float,
              stats_dir: str | None, out_dir: str) -> str:
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gradstore.torch import EGHookState, eg_compress_hook
    from gradstore.torch.lm import batches, build_model

    ways, states = {}, {}
    for way in WAYS:
        ddp = DDP(build_model(cfg))
        if way == "bf16":
            ddp.register_comm_hook(None, _bf16_hook())
        elif way.startswith("eg"):
            states[way] = EGHookState(scale=scale, k=k, error_feedback=way == "eg+ef")
            ddp.register_comm_hook(states[way], eg_compress_hook)
        ways[way] = (ddp, torch.optim.AdamW(ddp.parameters(), lr=cfg.lr))
    numel = sum(p.numel() for p in ddp.parameters() if p.requires_grad)
    seconds = {w: [] for w in WAYS}
    losses = {w: [] for w in WAYS}
    for step, x in enumerate(batches(cfg, rank, world_size, steps)):
        k0 = step % len(WAYS)
        for way in WAYS[k0:] + WAYS[:k0]:
            ddp, opt = ways[way]
            t0 = time.perf_counter()
            loss = ddp(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            seconds[way].append(time.perf_counter() - t0)
            losses[way].append(float(loss.detach()))
    sent = {"allreduce": [4 * numel] * steps, "bf16": [2 * numel] * steps}
    phases = {}
    for way, state in states.items():
        per_step = [0] * steps
        for r in state.records:
            per_step[r.step] += r.bytes_after
        sent[way] = per_step
        later = [r for r in state.records if r.step > 0]   # step 0: bucket rebuild, JIT start
        phases[way] = {p: sum(getattr(r, p) for r in later) / (steps - 1)
                       for p in ("encode_s", "comm_s", "decode_s")}
        phases[way]["fallbacks"] = state.compression_stats()["fallbacks"]
        phases[way]["spec"] = state.spec
        if stats_dir:
            state.write_stats(os.path.join(stats_dir, f"{way.replace('+', '_')}_rank{rank}.csv"))
    # the results go through a file: spawn's result pipe would block on a long run's lists
    path = os.path.join(out_dir, f"rank{rank}.json")
    with open(path, "w") as f:
        json.dump({"seconds": seconds, "losses": losses, "sent": sent, "phases": phases,
                   "numel": numel}, f)
    return path


def plot(out: str, steps: int, loss: dict, sent: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(16, 4.5))
    xs = list(range(steps))
    for way in WAYS:
        ax1.plot(xs, loss[way], label=way, linewidth=1, alpha=0.8)
        ax3.plot(xs, [a - b for a, b in zip(loss[way], loss["allreduce"])], label=way, linewidth=1)
        ax2.plot(xs, [b / 2**20 for b in sent[way]], label=way, linewidth=1.5)
    ax3.set_xlabel("step")
    ax3.set_ylabel("loss - all-reduce's loss")
    ax3.set_title("loss against the fp32 all-reduce (same batches)")
    ax3.legend()
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss (mean of the 2 ranks)")
    ax1.set_title("training loss")
    ax1.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("MiB sent per rank")
    ax2.set_ylim(bottom=0)
    ax2.set_title("bytes sent per step")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps per way (default 300)")
    ap.add_argument("--scale", type=float, default=1e6, help="EG quantization scale (default 1e6)")
    ap.add_argument("--k", default="auto", help="EG code order: 0..62 or auto (default auto)")
    ap.add_argument("--plot", metavar="OUT.png", help="write loss and bytes sent against step")
    ap.add_argument("--stats", metavar="DIR", help="write the EG hook's records, a CSV per way and rank")
    args = ap.parse_args()
    if args.steps < TAIL + 2:
        ap.error(f"--steps must be at least {TAIL + 2}")
    k = args.k if args.k == "auto" else int(args.k)
    if args.stats:
        os.makedirs(args.stats, exist_ok=True)

    from gradstore.torch.ddp import spawn
    from gradstore.torch.lm import LMConfig
    cfg = LMConfig()
    print(f"model: the demo's Llama (hidden {cfg.hidden}, {cfg.layers} layers, vocab {cfg.vocab}), "
          f"{cfg.batch}x{cfg.seq} tokens per rank per step, AdamW lr {cfg.lr}, seed {cfg.seed}; "
          f"2 ranks (gloo, CPU, 1 thread each); {args.steps} steps per way; "
          f"EG: scale {args.scale:g}, k={k}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_hook-") as out_dir:
        res = []
        for path in spawn(rank_main, 2, cfg, args.steps, k, args.scale, args.stats, out_dir,
                          threads=1, timeout=600):
            with open(path) as f:
                res.append(json.load(f))
    took = time.perf_counter() - t0
    steps = args.steps
    loss = {w: [statistics.fmean(r["losses"][w][s] for r in res) for s in range(steps)] for w in WAYS}
    sent = {w: [max(r["sent"][w][s] for r in res) for s in range(steps)] for w in WAYS}
    # the time of a step: the slower rank's (they wait for each other in every collective)
    secs = {w: sum(max(r["seconds"][w][s] for r in res) for s in range(1, steps)) / (steps - 1)
            for w in WAYS}
    final = {w: statistics.fmean(loss[w][-TAIL:]) for w in WAYS}
    base_bytes = statistics.fmean(sent["allreduce"])
    print(f"\n{res[0]['numel']} gradient elements per step; "
          f"loss at step 0: {loss['allreduce'][0]:.4f}\n")
    print(f"{'way':10s} {'bytes/step/rank':>16s} {'vs fp32':>8s} {'s/step':>8s} {'vs allreduce':>13s} "
          f"{'final loss':>11s} {'vs allreduce':>13s} {'last step':>10s}")
    for w in WAYS:
        b = statistics.fmean(sent[w])
        print(f"{w:10s} {b:16,.0f} {b / base_bytes:7.3f}x {secs[w]:8.4f} "
              f"{secs[w] / secs['allreduce']:12.2f}x {final[w]:11.5f} "
              f"{(final[w] - final['allreduce']) / final['allreduce']:+12.3%} {loss[w][-1]:10.5f}")
    print()
    for w, p in res[0]["phases"].items():
        steady = statistics.fmean(sent[w][1:])
        print(f"{w:10s} {p['spec']}: per step (after step 0) on rank 0: encode {p['encode_s'] * 1e3:.1f} ms, "
              f"communication {p['comm_s'] * 1e3:.1f} ms, decode {p['decode_s'] * 1e3:.1f} ms; "
              f"{8 * steady / res[0]['numel']:.2f} bits/element after step 0; "
              f"{p['fallbacks']} bucket(s) by exact all-reduce")
    ef_bytes = statistics.fmean(sent["eg+ef"]) / base_bytes
    ef_loss = abs(final["eg+ef"] - final["allreduce"]) / final["allreduce"]
    print(f"\ntarget bytes: eg+ef {ef_bytes:.3f}x the fp32 all-reduce (<= 0.35x: "
          f"{'met' if ef_bytes <= 0.35 else 'NOT met'}); eg {statistics.fmean(sent['eg']) / base_bytes:.3f}x")
    print(f"target loss: eg+ef final loss {ef_loss:.3%} from the all-reduce's (within 1%: "
          f"{'met' if ef_loss <= 0.01 else 'NOT met'})")
    print(f"(ran in {took:.1f} s, start-up included)")
    if args.plot:
        plot(args.plot, steps, loss, sent)


if __name__ == "__main__":
    main()
