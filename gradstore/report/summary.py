"""The terminal summary of a report: what a person reads, in at most ``width`` columns.

The CSV keeps every column at full precision; this keeps what answers "how
much smaller, and at what error": per group and codec the bits per element
against the order-0 entropy, the ratio of exact bits to raw bits with the
compression factor next to it (raw / coded, "2.5×"), the saving on disk
(record headers and padding included) and, for lossy codecs, the error.
Codec specs are long, so the table names them [1], [2], ... and lists them
once above it.  With many groups (a report per key) only the totals are
printed, and the CSV has the rest.
"""
from __future__ import annotations

from .groups import TOTAL

MAX_GROUPS = 40         # more groups than this: totals only

# (title, width, cell of a row)
COLUMNS = (
    ("keys", 6, lambda r: str(r["keys"])),
    ("raw MB", 9, lambda r: f"{r['raw_bytes'] / 1e6:.1f}"),
    ("bits/el", 7, lambda r: _num(r["bits_per_element"], "{:.2f}")),
    ("H/el", 6, lambda r: _num(r["entropy_per_element"], "{:.2f}")),
    ("ratio", 6, lambda r: _num(r["ratio_theory"], "{:.3f}")),
    ("factor", 7, lambda r: factor(r["ratio_theory"])),
    ("on disk", 7, lambda r: _num(r["saving_os"], "{:.1%}")),
    ("rel err", 8, lambda r: "lossless" if r["lossless"] else _num(r["rel_l2_err"], "{:.1e}")),
    ("n/e", 4, lambda r: str(r["not_encodable"] or "")),
)


def factor(ratio: float | None) -> str:
    """raw / coded as "2.5×": how many times smaller."""
    if not ratio:
        return "-"
    f = 1 / ratio
    return f"{f:.1f}×" if f < 100 else f"{f:.0f}×"


def _num(x, fmt: str) -> str:
    return "-" if x is None else fmt.format(x)


def _fit(text: str, w: int) -> str:
    """``text`` in ``w`` columns: its start and, longer, its end (where module names differ)."""
    if len(text) <= w:
        return text
    head = (w - 1) * 2 // 5
    return text[:head] + "…" + text[len(text) - (w - 1 - head):]


def _wrap(text: str, width: int, indent: str) -> list[str]:
    """A long spec over several lines, cut at commas."""
    lines, line = [], ""
    for part in text.split(","):
        piece = part if not line else "," + part
        if line and len(indent) + len(line) + len(piece) > width:
            lines.append(line + ",")
            line = part
        else:
            line += piece
    lines.append(line)
    return [(indent if i else "") + line for i, line in enumerate(lines)]


def render(rows: list[dict], totals: list[dict] | None = None, width: int = 100) -> str:
    """The summary of report ``rows`` (and their ``totals``, one row per codec)."""
    specs = list(dict.fromkeys(r["codec"] for r in rows + (totals or [])))
    coded = [s for s in specs if s != "raw"]
    labels = {**({"raw": "raw"} if "raw" in specs else {}), **{s: f"[{i}]" for i, s in enumerate(coded, 1)}}
    out = []
    for spec, label in labels.items():
        if spec != "raw":
            lossy = next((not r["lossless"] for r in rows + (totals or []) if r["codec"] == spec
                          and r["keys"]), False)
            head = f"{label} "
            for i, line in enumerate(_wrap(spec + ("  (lossy)" if lossy else ""), width - len(head),
                                           " " * len(head))):
                out.append((head if i == 0 else "") + line)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    numbers = sum(w for _, w, _ in COLUMNS) + len(COLUMNS)
    label_w = max(len(lb) for lb in labels.values())
    body = rows if len(groups) <= MAX_GROUPS else []
    if body:
        gw = max(5, min(max(len(g) for g in groups), width - numbers - label_w - 2))
        out.append(_header("group".ljust(gw) + " " + "".ljust(label_w)))
        for r in body:
            first = r["codec"] == specs[0]
            name = _fit(r["group"], gw) if first else ""
            out.append(_line(name.ljust(gw) + " " + labels[r["codec"]].ljust(label_w), r))
    if totals and (len(groups) > 1 or not body):
        if body:
            out.append("")
        name = f"all {sum(1 for _ in groups)} groups" if len(groups) > 1 else "all"
        gw = max(len(name), 5)
        out.append(_header("total".ljust(gw) + " " + "".ljust(label_w)))
        for r in totals:
            first = r["codec"] == specs[0]
            out.append(_line((name if first else "").ljust(gw) + " " + labels[r["codec"]].ljust(label_w), r))
        if not body:
            out.append(f"({len(groups)} groups: every row is in --csv, or use --group-by)")
    out.append("bits/el: coded bits per element; H/el: order-0 entropy of the coded symbols; ratio: "
               "exact bits / raw bits (factor = raw / coded); on disk: saving with record overhead; "
               "n/e: not encodable")
    return "\n".join(line for block in out for line in _wrap_plain(block, width))


def _header(left: str) -> str:
    return left + "".join(" " + t.rjust(w) for t, w, _ in COLUMNS)


def _line(left: str, r: dict) -> str:
    return (left + "".join(" " + cell(r).rjust(w) for _, w, cell in COLUMNS)).rstrip()


def _wrap_plain(text: str, width: int) -> list[str]:
    """Prose lines longer than ``width`` broken at spaces (table lines already fit)."""
    if len(text) <= width:
        return [text]
    import textwrap
    return textwrap.wrap(text, width) or [text[:width]]


__all__ = ["render", "factor", "TOTAL"]
