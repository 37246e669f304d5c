"""The ``gradstore`` command: parse arguments, call the API, print.

Every user mistake ends in one line on stderr and a non-zero exit status.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from . import keys as keys_mod
from .encoded import NO_TENSOR, catalog
from .errors import GradstoreError
from .progress import exit_on_interrupt, human_bytes
from .maintenance import compact, repair
from .store import open_store

EXIT_ERROR = 2
EXIT_DAMAGED = 1


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr, not a usage block."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_filter(text: str):
    try:
        return keys_mod.parse_int_filter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count(minimum: int = 1):
    """An argparse type for a count: a whole number of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {n}")
        return n
    parse.__name__ = "count"   # what argparse names in its messages
    return parse


def add_filters(p: argparse.ArgumentParser) -> None:
    """The selection options shared by ls, export and report."""
    p.add_argument("--rank", type=int_filter, help="e.g. 0, 0:4 or 0,2")
    p.add_argument("--epoch", type=int_filter)
    p.add_argument("--step", type=int_filter, help="e.g. 5, 10:20 (end exclusive) or 1,2,5")
    p.add_argument("--bucket", type=int_filter)
    p.add_argument("--module", action="append", help="glob, e.g. '*.mlp.*' (repeatable)")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """Where the work runs: -j processes, or an existing Dask cluster."""
    p.add_argument("-j", "--jobs", type=count(1), default=1, metavar="N",
                   help="processes: this one and N - 1 workers (default 1)")
    p.add_argument("--dask", metavar="ADDRESS", help="run on the Dask scheduler at ADDRESS "
                   "(e.g. tcp://node:8786); the store must be on a filesystem its workers share")
    p.add_argument("--scheduler-file", metavar="FILE", help="run on the Dask cluster described by "
                   "FILE (dask-jobqueue, dask-mpi, SLURM); the store must be on a shared filesystem")


def filters_of(args: argparse.Namespace) -> dict:
    return {"rank": args.rank, "epoch": args.epoch, "step": args.step,
            "bucket": args.bucket, "module": args.module}


def cmd_ls(args) -> int:
    with open_store(args.path) as gs:
        keys = gs.keys(**filters_of(args))
        out = sys.stdout
        encoded = gs.encoded_keys(**filters_of(args))   # no tensor: which variants hold them
        for key in [*keys, *encoded]:
            if not args.long:
                out.write(key + "\n")
                continue
            e = gs.source_entry(key)
            shape = "x".join(map(str, e.shape)) or "scalar"
            size = (e.payload_len if e.seq != NO_TENSOR
                    else f"variants only: {', '.join(catalog(gs)[key])}")
            out.write(f"{key}\t{e.dtype}\t{shape}\t{size}\n")
    return 0


def cmd_info(args) -> int:
    with open_store(args.path) as gs:
        info = gs.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    steps = info["steps"]
    print(f"store        {info['path']}")
    print(f"keys         {info['keys']}")
    print(f"buckets      {info['buckets']}")
    print(f"ranks        {_span(info['ranks'])}")
    print(f"epochs       {_span(info['epochs'])}")
    print(f"steps        {f'{steps[0]}..{steps[1]}' if steps else '-'}")
    print(f"dtypes       {', '.join(f'{k}: {v}' for k, v in info['dtypes'].items()) or '-'}")
    print(f"tensor bytes {human_bytes(info['tensor_bytes'])} ({info['tensor_bytes']})")
    print(f"disk bytes   {human_bytes(info['disk_bytes'])} ({info['disk_bytes']})")
    print(f"variants     {info['variants']}")
    if info["encoded_only"]:
        print(f"encoded only {info['encoded_only']} keys (variants without their tensors)")
    for name, segs in info["namespaces"].items():
        print(f"namespace    {name}: {segs['data']} data segment(s), {segs['var']} variant segment(s)")
    print(f"segment size {human_bytes(info['segment_size'])}")
    return 0


def _span(values: list[int]) -> str:
    if not values:
        return "-"
    if values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}..{values[-1]} ({len(values)})"
    return ", ".join(map(str, values))


def cmd_get(args) -> int:
    with open_store(args.path) as gs:
        if args.codec:
            arr = gs.variant(args.key, args.codec, verify=True)
        else:
            arr = gs.read(args.key, verify=True)
        if args.output.endswith(".npy"):
            if arr.dtype.name == "bfloat16":
                print("gradstore: note: .npy has no bfloat16; widened to float32 (exact)", file=sys.stderr)
                arr = arr.astype(np.float32)
            np.save(args.output, arr)
        else:
            with open(args.output, "wb") as f:
                f.write(memoryview(arr.reshape(-1).view(np.uint8)))
    print(f"{args.key}: {arr.dtype} {tuple(arr.shape)} -> {args.output}")
    return 0


def cmd_verify(args) -> int:
    with open_store(args.path) as gs:
        n = len(gs) + len(gs.encoded_keys())
        problems = gs.verify()
    for p in problems:
        print(f"DAMAGED {p}")
    if problems:
        print(f"gradstore: {len(problems)} damaged record(s) of {n} keys", file=sys.stderr)
        return EXIT_DAMAGED
    print(f"ok: {n} keys verified")
    return 0


def cmd_repair(args) -> int:
    counts = repair(args.path)
    for name, n in counts.items():
        print(f"{name}: index rebuilt from segments, {n} entries")
    for p in counts.lost:
        print(f"lost: {p}")
    return EXIT_DAMAGED if counts.lost else 0


def cmd_compact(args) -> int:
    for name, (before, after) in compact(args.path).items():
        print(f"{name}: {human_bytes(before)} -> {human_bytes(after)} "
              f"(reclaimed {human_bytes(before - after)})")
    return 0


def cmd_synth(args) -> int:
    from . import synth
    from .marker import parse_size
    model = synth.ModelShape(hidden=args.hidden, layers=args.layers)
    total = 0
    nbuckets = 0
    with open_store(args.path, "a") as gs:
        for name, tensors in synth.run(args.ranks, args.epochs, args.steps, args.dtype, model,
                                       bucket_bytes=parse_size(args.bucket_size), seed=args.seed):
            gs.write_bucket(name, tensors)
            total += sum(t.nbytes for t in tensors.values())
            nbuckets += 1
    print(f"wrote {nbuckets} buckets, {human_bytes(total)} of {args.dtype} gradients to {args.path}")
    return 0


def _engine_options(args) -> dict:
    return {"jobs": args.jobs, "dask": args.dask, "scheduler_file": args.scheduler_file}


def cmd_encode(args) -> int:
    if args.dask and args.scheduler_file:
        print("gradstore: error: give --dask or --scheduler-file, not both", file=sys.stderr)
        return EXIT_ERROR
    with open_store(args.path, "a") as gs:
        for spec in args.codec:
            result = gs.encode(spec, progress=False if args.quiet else None, **_engine_options(args),
                               **filters_of(args))
            print(result)
            for key, reason in result.failed.items():
                print(f"not encodable: {key}: {reason}", file=sys.stderr)
    return 0


REPORT_EPILOG = """\
columns:
  theory  ratio (and saving) of the codec's exact bits to the raw tensor's bits:
          the coded body alone, what the codec achieves in principle
  os      ratio (and saving) of the bytes the records really take on disk,
          record headers and 64-byte padding included, raw record against
          variant record: what a store of these variants would cost
  factor  raw / coded on exact bits ("2.5x": two and a half times smaller)
  bits_per_element, entropy_per_element (order-0 entropy of the coded
          symbols) and efficiency (entropy / bits); errors of lossy codecs
          (rel L2 error, max abs error)

output:
  a summary that fits 100 columns (codecs named [1], [2], ...; totals only
  when there are more than 40 groups); --csv FILE keeps every column of
  every row: one row per key, or per group with --group-by; --plot DIR
  writes PNGs; --study answers whether remap=rank and grouping pay; a
  communication hook's records in the store (hooks/, written by
  GradientCapture with gradstore.torch.EGHookState) are printed and plotted

resuming:
  per-key results are appended to a results file (default: STORE.results
  next to the store) as they arrive; a report stopped by Ctrl-C or a crash
  starts again where it stopped when run again.  --fresh starts over.

dask:
  --dask ADDRESS or --scheduler-file FILE (dask-jobqueue / SLURM) runs the
  tasks on an existing Dask cluster; its workers open the store by the same
  path, so it must be on a filesystem they share.
"""


def _render(rep) -> str:
    """The terminal summary of a report (gradstore.report.summary)."""
    from .report import summary
    return summary.render(rep.rows, rep.totals, width=100)


def _hook_stats(store_path) -> dict:
    """The communication hooks' records in the store (gradstore.hookstats); a warning line
    per file that cannot be read."""
    from . import hookstats
    stats, problems = hookstats.read_store(store_path)
    for problem in problems:
        print(f"gradstore: warning: {problem}", file=sys.stderr)
    return stats


def _write_csv(path: str, rows) -> None:
    import csv
    with open(path, "w", newline="") as f:
        writer = None
        for row in rows:
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
        if writer is None:
            f.write("group\n")


def cmd_report(args) -> int:
    from . import hookstats
    from . import report as report_mod
    from .report.groups import check_group_by
    group_by = check_group_by(args.group_by or "")
    if args.dask and args.scheduler_file:
        print("gradstore: error: give --dask or --scheduler-file, not both", file=sys.stderr)
        return EXIT_ERROR
    if args.study:
        try:
            from .report import study
        except ImportError:
            print("gradstore: error: --study is not available in this version", file=sys.stderr)
            return EXIT_ERROR
    if args.plot:
        try:
            from .report import plots
        except ImportError:
            print("gradstore: error: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return EXIT_ERROR
    with open_store(args.path) as gs:
        try:
            rep = report_mod.run(gs, args.codec or [], None, group_by,
                                 results=args.results, fresh=args.fresh,
                                 progress=False if args.quiet else None,
                                 **_engine_options(args), **filters_of(args))
        except report_mod.Interrupted as stop:
            print(f"gradstore: {stop}", file=sys.stderr, flush=True)
            return 130
        try:
            if args.csv:
                _write_csv(args.csv, rep.rows)
            print(_render(rep) if rep.rows else "", flush=True)
            if not rep.rows:
                print("(no keys matched)", file=sys.stderr)
            hooks = _hook_stats(gs.path)
            if hooks:
                print(hookstats.render(hooks))
            if args.plot:
                for path in plots.write(rep.results(), args.plot):
                    print(path)
                if hooks:
                    print(plots.write_hooks(hooks, args.plot))
            if args.study:
                keys = gs.keys(**filters_of(args))
                eg = next((c for c in args.codec or [] if c.split(":")[0].strip() == "eg"), None)
                res = study.run(gs, keys, spec=eg, progress=False if args.quiet else None,
                                **_engine_options(args))
                print(res.render(width=100))
        finally:
            rep.close()
    return 0


def cmd_demo(args) -> int:
    from . import demo
    problem = demo.check_dependencies()
    if problem:
        print(f"gradstore: error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    if args.steps < 1:
        print("gradstore: error: --steps must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    if os.path.exists(args.path):
        print(f"gradstore: error: {args.path} already exists; remove it or name another store",
              file=sys.stderr)
        return EXIT_ERROR
    demo.run(args.path, steps=args.steps, dtype=args.dtype, codecs=args.capture_codec or ())
    codecs = args.codec or list(demo.CODECS)
    report = ["report", args.path, *(a for c in codecs for a in ("--codec", c)), "--group-by", "rank"]
    for argv in (["info", args.path], report):
        print(f"\n$ gradstore {' '.join(argv)}", flush=True)
        if main(argv):
            return EXIT_ERROR
    print()
    demo.plot(args.path, codecs, out_dir=args.plots or os.path.dirname(os.path.abspath(args.path)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gradstore", description="Store and study DDP gradients.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ls", help="list keys")
    p.add_argument("path")
    p.add_argument("-l", "--long", action="store_true", help="also print dtype, shape and bytes "
                   "(or, for keys stored as variants only, their codecs)")
    add_filters(p)
    p.set_defaults(run=cmd_ls)

    p = sub.add_parser("info", help="counts, bytes, segments, dtypes")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("get", help="write one tensor to a .npy (or raw .bin) file")
    p.add_argument("path")
    p.add_argument("key")
    p.add_argument("-o", "--output", required=True, help="out.npy, or any other name for raw bytes")
    p.add_argument("--codec", metavar="SPEC", help="the stored variant of that codec, decoded")
    p.set_defaults(run=cmd_get)

    p = sub.add_parser("verify", help="check every record's checksum; exit 1 if any is damaged")
    p.add_argument("path")
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser("repair", help="rebuild the index from the segments")
    p.add_argument("path")
    p.set_defaults(run=cmd_repair)

    p = sub.add_parser("encode", help="store encoded variants next to the raw tensors")
    p.add_argument("path")
    p.add_argument("--codec", action="append", required=True, help="codec spec, e.g. eg:k=auto,scale=1e6")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_engine_options(p)
    add_filters(p)
    p.set_defaults(run=cmd_encode)

    p = sub.add_parser("report", help="side-by-side sizes, entropy and error per key or group",
                       description="Side-by-side sizes, entropy and error of each codec, per key "
                       "or per group, in parallel (-j) or on a Dask cluster; resumable.",
                       epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path")
    p.add_argument("--codec", action="append", help="codec spec (repeatable)")
    p.add_argument("--group-by", help="comma list of rank,epoch,step,bucket,module")
    p.add_argument("--csv", help="also write every column to this CSV file: one row per key and "
                   "codec (per group and codec with --group-by)")
    p.add_argument("--results", help="where per-key results are kept, to resume "
                   "(default: STORE.results next to the store)")
    p.add_argument("--fresh", action="store_true", help="ignore and replace earlier results")
    p.add_argument("--plot", metavar="DIR", help="also write plots into DIR")
    p.add_argument("--study", action="store_true", help="also print the study of the selection")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_engine_options(p)
    add_filters(p)
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("synth", help="write a realistic synthetic gradient run (for trying gradstore)")
    p.add_argument("path")
    p.add_argument("--ranks", type=count(1), default=2)
    p.add_argument("--epochs", type=count(1), default=1)
    p.add_argument("--steps", type=count(1), default=4)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--hidden", type=count(1), default=512)
    p.add_argument("--layers", type=count(1), default=4)
    p.add_argument("--bucket-size", default="25MB", help="DDP bucket cap (default 25MB)")
    p.add_argument("--seed", type=count(0), default=0)
    p.set_defaults(run=cmd_synth)

    p = sub.add_parser("demo", help="train a small LLM with DDP on CPU, capture its gradients, report")
    p.add_argument("path", nargs="?", default="demo.gs", help="new store to create (default demo.gs)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--codec", action="append", help="codec spec for the report (repeatable)")
    p.add_argument("--capture-codec", action="append", help="also store this variant while training")
    p.add_argument("--plots", help="directory for the PNG plots (default: next to the store)")
    p.set_defaults(run=cmd_demo)

    # convert and export parse their own arguments (gradstore/convert/cli.py);
    # they are listed here for --help.
    sub.add_parser("convert", help="import .pt, HDF5 and safetensors files (see gradstore convert --help)",
                   add_help=False)
    sub.add_parser("export", help="write a selection out as .pt, safetensors or HDF5 files",
                   add_help=False)

    p = sub.add_parser("compact", help="reclaim the space of overwritten records")
    p.add_argument("path")
    p.set_defaults(run=cmd_compact)

    return parser


def main(argv: list[str] | None = None) -> int:
    """``gradstore``: a Ctrl-C at any moment ends it with one line and status 130."""
    return exit_on_interrupt("gradstore", lambda: _main(argv), leaving=argv is None)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["convert"]:
        from .convert.cli import convert_main
        return convert_main(argv[1:], prog="gradstore convert")
    if argv[:1] == ["export"]:
        from .convert.cli import export_main
        return export_main(argv[1:], prog="gradstore export")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("gradstore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gradstore ls run.gs | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyError as exc:
        print(f"gradstore: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
    except (GradstoreError, OSError, ValueError, TypeError) as exc:
        print(f"gradstore: error: {exc}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
