"""What a conversion did (Report), and how it is shown while it runs (Display)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from ..progress import human_bytes


@dataclass
class Report:
    """Counts and errors of a conversion; ``ok`` is what the exit code says."""

    files_seen: int = 0
    files_converted: int = 0      # every tensor verified in the store
    files_present: int = 0        # of those, every tensor was there already
    files_failed: int = 0
    files_left: int = 0           # not converted: interrupted, or still being written
    tensors_written: int = 0
    tensors_present: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    sources_deleted: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        secs = self.elapsed or (time.monotonic() - self.started)
        rate = self.bytes_read / secs if secs > 0 else 0.0
        parts = [f"{self.files_converted} files converted"]
        if self.files_present:
            parts[0] += f" ({self.files_present} already in the store)"
        if self.files_failed:
            parts.append(f"{self.files_failed} failed")
        if self.files_left:
            parts.append(f"{self.files_left} left")
        line = ", ".join(parts)
        line += (f"; {self.tensors_written} tensors written, {self.tensors_present} already present"
                 f"; {human_bytes(self.bytes_read)} read in {secs:.1f} s ({human_bytes(rate)}/s)")
        if self.sources_deleted:
            line += f"; {self.sources_deleted} sources deleted"
        if self.interrupted:
            line += "; interrupted"
        return line


class Display:
    """Silent: what the Python API uses unless told otherwise."""

    def grow(self, files: int, nbytes: int) -> None:
        """More work is known: ``files`` files of about ``nbytes`` bytes."""

    def advance(self, report: Report, nbytes: int) -> None:
        """A part is done; ``nbytes`` of the estimate are behind us."""

    def file(self, path: str, status: str) -> None:
        """A file reached a state: converted, present, failed, deleted."""

    def error(self, line: str) -> None:
        """An error about one file (already prefixed with its path)."""

    def note(self, line: str) -> None:
        """Something worth telling the user, not about one file."""

    def close(self, report: Report) -> None:
        """The run is over."""


class TerminalDisplay(Display):
    """A tqdm bar on stderr (only on a terminal), error lines and a closing summary."""

    def __init__(self, prog: str, *, bar: bool | None = None, verbose: bool = False,
                 quiet: bool = False):
        from tqdm import tqdm
        self.prog = prog
        self.verbose = verbose
        self.quiet = quiet
        self.files = 0
        self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
                        disable=True if quiet else (None if bar is None else not bar),
                        file=sys.stderr, desc="converting", smoothing=0.1)

    def _write(self, line: str, stream=None) -> None:
        stream = stream or sys.stderr
        if self.bar.disable:
            print(line, file=stream, flush=True)
        else:
            self.bar.write(line, file=stream)

    def grow(self, files: int, nbytes: int) -> None:
        self.files += files
        self.bar.total += nbytes
        self.bar.refresh()

    def advance(self, report: Report, nbytes: int) -> None:
        self.bar.set_postfix_str(
            f"files {report.files_converted + report.files_failed}/{self.files}, "
            f"tensors {report.tensors_written + report.tensors_present}"
            + (f", errors {len(report.errors)}" if report.errors else ""), refresh=False)
        self.bar.update(nbytes)

    def file(self, path: str, status: str) -> None:
        if self.verbose:
            self._write(f"{status} {path}", sys.stdout)

    def error(self, line: str) -> None:
        self._write(f"{self.prog}: error: {line}")

    def note(self, line: str) -> None:
        if not self.quiet:
            self._write(f"{self.prog}: {line}")

    def close(self, report: Report) -> None:
        self.bar.close()
        if not self.quiet:
            print(f"{self.prog}: {report.summary()}", file=sys.stderr, flush=True)
