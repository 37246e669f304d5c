"""``gradstore-convert SRC... DEST`` and ``gradstore export``: parse, call the API, print.

Every user mistake ends in one line on stderr and a non-zero exit status:
2 for a bad command line or a store that cannot be opened, 1 when some
files failed (each has its own error line), 130 when interrupted.
"""
from __future__ import annotations

import argparse
import sys

from .. import dtypes
from ..errors import GradstoreError
from ..progress import EXIT_INTERRUPTED, exit_on_interrupt
from .source import one_line

EXIT_FAILED = 1
EXIT_ERROR = 2
FLOAT_DTYPES = [n for n in dtypes.NAMES if n.startswith(("float", "bfloat"))]


def _parser_class():
    from ..cli import Parser  # imported late: gradstore.cli may import this module
    return Parser


def build_convert_parser(prog: str = "gradstore-convert") -> argparse.ArgumentParser:
    from ..cli import count
    from .pipeline import DEFAULT_JOBS
    from .watch import GIVE_UP, SETTLE
    p = _parser_class()(
        prog=prog, usage=f"{prog} [options] SRC... DEST\n       {prog} [options] --watch DIR DEST",
        description="Convert .pt/.pth, HDF5 and safetensors gradient files into a gradstore "
                    "store. Re-runs skip what is stored already; a key stored with other data "
                    "is an error, never overwritten.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="SRC... DEST: source files or directories (searched recursively), "
                        "then the store (created if missing)")
    p.add_argument("-j", "--jobs", type=count(0), default=DEFAULT_JOBS,
                   help=f"reader processes (default {DEFAULT_JOBS}; 0 reads in this process)")
    p.add_argument("--dtype", choices=FLOAT_DTYPES,
                   help="HDF5 sources: the true dtype of their floating-point datasets, e.g. "
                        "bfloat16 saved as float32 (the cast must be exact)")
    p.add_argument("--delete-source", action="store_true",
                   help="delete each source file once all its tensors are verified and fsynced")
    w = p.add_argument_group("watching a live directory")
    w.add_argument("--watch", metavar="DIR",
                   help="follow DIR and convert each file once complete (then only DEST is given)")
    w.add_argument("--once", action="store_true", help="with --watch: convert what is there, exit")
    w.add_argument("--settle", type=float, default=SETTLE, metavar="SECONDS",
                   help=f"a file must be unchanged this long before it is read (default {SETTLE:g})")
    w.add_argument("--give-up", type=float, default=GIVE_UP, metavar="SECONDS",
                   help=f"report a file unchanged but incomplete for this long (default {GIVE_UP:g})")
    o = p.add_argument_group("output")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    o.add_argument("-v", "--verbose", action="store_true",
                   help="print a line per file: converted, present, failed, deleted")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def convert_main(argv: list[str] | None = None, prog: str = "gradstore-convert") -> int:
    """Entry point of ``gradstore-convert`` and ``gradstore convert``."""
    return exit_on_interrupt(prog, lambda: _convert(argv, prog), leaving=argv is None)


def _convert(argv: list[str] | None, prog: str) -> int:
    parser = build_convert_parser(prog)
    args = parser.parse_args(argv)
    if args.watch is not None and len(args.paths) != 1:
        parser.error("with --watch DIR give only DEST (the sources are the files in DIR)")
    if args.watch is None and len(args.paths) < 2:
        parser.error("give at least one SRC and then DEST")
    if args.watch is None and args.once:
        parser.error("--once goes with --watch")
    if args.settle < 0 or args.give_up <= 0:
        parser.error("--settle must be 0 or more and --give-up more than 0")

    from .progress import TerminalDisplay
    display = TerminalDisplay(prog, bar=False if args.no_progress else None,
                              verbose=args.verbose, quiet=args.quiet)
    common = dict(jobs=args.jobs, dtype=args.dtype, delete_source=args.delete_source,
                  display=display)
    try:
        if args.watch is not None:
            from .watch import watch
            report = watch(args.watch, args.paths[0], once=args.once, settle=args.settle,
                           give_up=args.give_up, **common)
        else:
            from .pipeline import convert
            report = convert(args.paths[:-1], args.paths[-1], **common)
    except (GradstoreError, OSError, ValueError) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        display.bar.close()
    if report.errors:
        return EXIT_FAILED
    if report.interrupted:
        if args.quiet:   # else the summary says so
            print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def build_export_parser(prog: str = "gradstore export") -> argparse.ArgumentParser:
    from ..cli import add_filters
    from .export import FORMATS
    p = _parser_class()(
        prog=prog, description="Write a subset of a store as .pt, .safetensors or HDF5 files "
                               "that convert back to the same keys.")
    p.add_argument("path", help="the store")
    p.add_argument("--to", required=True, metavar="DIR", help="directory for the files")
    p.add_argument("--format", choices=list(FORMATS), default="pt")
    p.add_argument("--pack-size", default="1.8TB",
                   help="h5: start a new pack past this size (default 1.8TB)")
    p.add_argument("--codec", metavar="SPEC",
                   help="also export the keys stored as encoded variants only, decoded from "
                        "this codec's variant (lossy codecs give approximate tensors)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    add_filters(p)
    return p


def export_main(argv: list[str] | None = None, prog: str = "gradstore export") -> int:
    """Entry point of ``gradstore export``."""
    return exit_on_interrupt(prog, lambda: _export(argv, prog), leaving=argv is None)


def _export(argv: list[str] | None, prog: str) -> int:
    from ..cli import filters_of
    parser = build_export_parser(prog)
    args = parser.parse_args(argv)
    from tqdm import tqdm

    from ..marker import parse_size
    from .export import export
    from .progress import human_bytes
    try:
        pack_size = parse_size(args.pack_size)
    except ValueError as exc:
        parser.error(str(exc))
    bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc="exporting",
               disable=True if args.quiet else None)
    try:
        report = export(args.path, args.to, format=args.format, pack_size=pack_size,
                        progress=bar.update, codec=args.codec, **filters_of(args))
    except ImportError as exc:
        print(f"{prog}: error: --format {args.format} needs {exc.name or 'a missing package'} "
              f"(pip install 'gradstore[all]')", file=sys.stderr)
        return EXIT_ERROR
    except (GradstoreError, OSError, ValueError, TypeError, KeyError) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        bar.close()
    if report.encoded_left_out:
        print(f"{prog}: warning: {report.encoded_left_out} keys stored as encoded variants only "
              f"were left out (export them decoded with --codec SPEC)", file=sys.stderr)
    if not args.quiet:
        decoded = ""
        if report.decoded:
            decoded = (f", {report.decoded} decoded from {args.codec} variants"
                       + (" (lossy: approximate values)" if report.lossy else " (exact)"))
        print(f"{prog}: {report.tensors} tensors ({human_bytes(report.nbytes)}{decoded}) into "
              f"{len(report.files)} {args.format} files in {args.to} ({report.elapsed:.1f} s)",
              file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``gradstore-convert``."""
    return convert_main(argv)
