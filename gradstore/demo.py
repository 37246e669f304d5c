"""``gradstore demo``: a short real DDP training run captured into a store, then described.

Two ranks (gloo over 127.0.0.1, CPU) train a small Llama built from a
``transformers`` config (random init, nothing downloaded) on generated text.
A ``GradientCapture`` stores every bucket of every rank at every step
(optionally with variants encoded at capture time). The CLI then prints the store's
info and a size report, and this module draws plots when matplotlib is there.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

CODECS = ("eg:k=0,scale=1e6,sign=bit", "zstd:level=3")
CAPTURE_CODECS = ()   # specs stored as variants while training (costs CPU in the writer thread)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _rank_main(rank: int, world_size: int, path: str, cfg, steps: int, codecs) -> dict:
    """One rank: build the model, wrap it in DDP, train with capture. Rank 0 reports progress."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from .torch.capture import GradientCapture
    from .torch.lm import build_model, train
    ddp = DDP(build_model(cfg))

    def report(step: int, loss: float, seconds: float) -> None:
        if rank == 0:
            _say(f"  step {step + 1}/{steps}  loss {loss:.3f}  {seconds:.2f} s  "
                 f"buckets captured {capture.stats.captured}")

    with GradientCapture(path, codecs=list(codecs)) as capture:
        capture.register(ddp)
        times, losses = train(ddp, cfg, rank, world_size, steps,
                              before_step=lambda s: capture.step(step=s), after_step=report)
    return {"times": times, "losses": losses, "stats": vars(capture.stats)}


def run(path: str | os.PathLike, *, steps: int = 20, world_size: int = 2, dtype: str = "float32",
        codecs=CAPTURE_CODECS) -> list[dict]:
    """Train and capture into ``path``; returns each rank's step times, losses and capture stats."""
    from .torch.ddp import spawn
    from .torch.lm import LMConfig, generate_text
    cfg = replace(LMConfig(), dtype=dtype)
    ids, words = generate_text(cfg.vocab, 40, cfg.seed)
    _say(f"gradstore demo: {world_size} ranks (gloo, 127.0.0.1, CPU), {steps} steps of a Llama "
         f"({cfg.layers} layers, hidden {cfg.hidden}, vocab {cfg.vocab}, {dtype}, random init)")
    _say(f"  generated text: {' '.join(words[i] for i in ids[:16])} ...")
    _say(f"  capturing every bucket into {path} (variants at capture time: {', '.join(codecs) or 'none'})")
    t0 = time.perf_counter()
    results = spawn(_rank_main, world_size, os.fspath(path), cfg, steps, tuple(codecs))
    took = time.perf_counter() - t0
    for rank, r in enumerate(results):
        s = r["stats"]
        _say(f"  rank {rank}: loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}, "
             f"{s['written']} buckets, {s['tensors']} tensors, {s['bytes'] / 2**20:.1f} MiB stored, "
             f"{s['dropped']} dropped")
    _say(f"  trained and captured in {took:.1f} s (start-up included)")
    return results


def plot(path: str | os.PathLike, codecs=CODECS, out_dir: str | os.PathLike = ".") -> list[str]:
    """bytes per step (raw and per codec) and ratio per codec, as PNG files; [] without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        _say("(matplotlib is not installed: no plots; pip install matplotlib)")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .store import open_store
    with open_store(path) as gs:
        rows = gs.sizes(list(codecs), group_by=("step",), progress=False)
    steps = sorted({int(r["group"].split("=")[-1]) for r in rows})
    by_codec: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_codec.setdefault(r["codec"], {})[int(r["group"].split("=")[-1])] = r
    written = []
    os.makedirs(out_dir, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    raw = by_codec.pop("raw", None) or next(iter(by_codec.values()))
    ax.plot(steps, [raw[s]["raw_bytes"] / 2**20 for s in steps], "k-o", label="raw")
    for spec, per_step in by_codec.items():
        ax.plot(steps, [per_step[s]["disk_bytes"] / 2**20 for s in steps], "-o", label=spec)
    ax.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("step")
    ax.set_ylabel("MiB (all ranks)")
    ax.set_title("gradient bytes per step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(os.path.join(out_dir, "demo_bytes_per_step.png"))
    fig.savefig(written[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    specs = list(by_codec)
    ratios = [sum(r["disk_bytes"] for r in by_codec[c].values())
              / sum(r["raw_bytes"] for r in by_codec[c].values()) for c in specs]
    ax.bar(range(len(specs)), ratios)
    ax.set_xticks(range(len(specs)), specs, fontsize=8)
    ax.set_ylabel("disk bytes / raw bytes")
    ax.set_title("compression ratio per codec (lower is smaller)")
    fig.tight_layout()
    written.append(os.path.join(out_dir, "demo_ratio_per_codec.png"))
    fig.savefig(written[-1])
    plt.close(fig)
    for f in written:
        _say(f"wrote {f}")
    return written


def check_dependencies() -> str | None:
    """None, or what the demo needs and how to install it."""
    missing = []
    for mod in ("torch", "transformers"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        return (f"gradstore demo needs {' and '.join(missing)}: "
                f"pip install torch==2.13.0 && pip install -e \".[demo]\"")
    return None


if __name__ == "__main__":  # python -m gradstore.demo [path]
    run(sys.argv[1] if len(sys.argv) > 1 else "demo.gs")
