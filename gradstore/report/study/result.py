"""What the study found, and how it reads: two tables and one answer per question."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

from .model import VARIANTS, Cost

K0, K0_RANK, AUTO, AUTO_RANK = range(len(VARIANTS))
# the groupings of question 2, finest first (grouping_label names them)
GROUPINGS = ("chunk", "tensor", "bucket", "module type")
TABLE_NOTE = ("Rank tables count as eg writes them: once per model, in the model's bits; "
              "payload headers (40 bytes a model) are not counted.")


@dataclass
class Study:
    """Costs per module type (one model per tensor) and per grouping; see the package docstring."""

    spec: str                  # the scale and sign studied
    chunk: int                 # elements per model of the per-chunk grouping
    keys: int                  # keys selected
    by_module: dict[str, Cost] = field(default_factory=dict)
    groupings: dict[str, Cost] = field(default_factory=lambda: {g: Cost() for g in GROUPINGS})
    skipped: list[tuple[str, str]] = field(default_factory=list)    # (key, why): not studied

    @property
    def overall(self) -> Cost:
        """All studied tensors, one model per tensor."""
        return self.groupings["tensor"]

    def grouping_label(self, name: str) -> str:
        if name == "chunk":
            size = f"{self.chunk >> 10}K" if self.chunk % 1024 == 0 else str(self.chunk)
            return f"per {size}-element chunk"
        return f"per {name}"

    # -- the answers ---------------------------------------------------------

    def rank_answer(self) -> str:
        """Question 1 in one sentence, from the numbers."""
        c = self.overall
        if not c.elements:
            return "No float tensor was studied: nothing to answer."
        auto, rank = c.per_element(AUTO), c.per_element(AUTO_RANK)
        k0, k0_rank = c.per_element(K0), c.per_element(K0_RANK)
        tables = c.table_bits[AUTO_RANK] / c.elements
        types = [m for m in self.by_module.values() if m.elements]
        pays = sum(1 for m in types if m.bits[AUTO_RANK] < m.bits[AUTO])
        return (f"{'Yes' if rank < auto else 'No'}: remap=rank {_change(auto, rank, 'natural order')} "
                f"at k=auto ({auto:.2f} -> {rank:.2f}, of which {tables:.2f} rank tables; the "
                f"reordered codewords alone {'save' if auto - rank + tables > 0 else 'cost'} "
                f"{abs(auto - rank + tables):.2f}) and {_change(k0, k0_rank, 'it')} at k=0; "
                f"it pays for {pays} of {len(types)} module types, and eg stays "
                f"{rank - c.entropy_per_element:.2f} bits/element above the entropy "
                f"({c.entropy_per_element:.2f}).")

    def grouping_answer(self) -> str:
        """Question 2 in one sentence, from the numbers."""
        base = self.groupings["tensor"]
        if not base.elements:
            return "No float tensor was studied: nothing to answer."
        bpe = {g: c.per_element(AUTO_RANK) for g, c in self.groupings.items()}
        best = min(GROUPINGS, key=lambda g: (bpe[g], GROUPINGS.index(g)))
        b, t = self.groupings[best], base
        others = ", ".join(f"{self.grouping_label(g)} {bpe[g]:.2f}" for g in GROUPINGS
                           if g not in (best, "tensor"))
        if best == "tensor":
            return (f"No: one model per tensor, as eg codes today, is best at {bpe['tensor']:.2f} "
                    f"bits/element (k=auto, remap=rank; {others}).")
        return (f"Yes: one model {self.grouping_label(best)} codes at {bpe[best]:.2f} bits/element "
                f"(k=auto, remap=rank), {bpe['tensor'] - bpe[best]:.2f} ({_pct(bpe['tensor'] - bpe[best], bpe['tensor'])}) "
                f"below per tensor ({bpe['tensor']:.2f}); against per tensor its entropy bound is "
                f"{b.entropy_per_element - t.entropy_per_element:+.2f} bits/element and its rank tables "
                f"{(b.table_bits[AUTO_RANK] - t.table_bits[AUTO_RANK]) / t.elements:+.2f} "
                f"({others}).")

    # -- output ----------------------------------------------------------------

    def to_rows(self) -> list[dict]:
        """One row per module type (question 1, per tensor models), then one per grouping
        (question 2); the same columns throughout, bits per element."""
        rows = [_row("rank", m, self.by_module[m]) for m in sorted(self.by_module)]
        rows.append(_row("rank", "all", self.overall))
        rows += [_row("grouping", self.grouping_label(g), self.groupings[g]) for g in GROUPINGS]
        return rows

    def render(self, width: int = 100) -> str:
        """Both tables and answers as text no wider than ``width`` (at least 72)."""
        width = max(width, 72)
        c = self.overall
        skipped = f"; {len(self.skipped)} not studied (not float or not encodable)" if self.skipped else ""
        lines = textwrap.wrap(f"Study of {self.keys - len(self.skipped)} tensors, {_count(c.elements)} "
                              f"elements, quantized as {self.spec}{skipped}.", width - 1)
        lines += ["Bits per element; H: order-0 entropy of the quantized values; rank: remap=rank.", ""]
        lines.append("1. Does ordering symbols by probability (remap=rank) pay?  One model per tensor.")
        name_w = width - 60
        head = (f"{'module type':<{name_w}} {'elements':>8} {'H':>6} {'k=0':>6} {'k=0':>6} "
                f"{'k=auto':>6} {'k=auto':>6} {'rank saves':>13}")
        head2 = f"{'':<{name_w}} {'':>8} {'':>6} {'':>6} {'rank':>6} {'':>6} {'rank':>6} {'at k=auto':>13}"
        lines += [head, head2]
        for name in sorted(self.by_module) + ["all"]:
            m = self.by_module[name] if name != "all" else c
            if name == "all":
                lines.append("-" * (width - 1))
            lines.append(f"{_fit(name, name_w):<{name_w}} {_count(m.elements):>8} "
                         f"{_num(m.entropy_per_element):>6} "
                         + " ".join(f"{_num(m.per_element(i)):>6}" for i in range(len(VARIANTS)))
                         + f" {_saving(m):>13}")
        lines += textwrap.wrap(self.rank_answer(), width - 1) + [""]
        lines.append("2. Does grouping tensors pay?  One model (k, rank table) per group.")
        gw = width - 56
        lines.append(f"{'grouping':<{gw}} {'models':>8} {'H':>6} {'k=auto':>7} {'k=auto':>7} "
                     f"{'tables':>7} {'gap':>7} {'H/bits':>7}")
        lines.append(f"{'':<{gw}} {'':>8} {'':>6} {'':>7} {'rank':>7} {'(rank)':>7} {'to H':>7} {'':>7}")
        for g in GROUPINGS:
            m = self.groupings[g]
            bpe, h = m.per_element(AUTO_RANK), m.entropy_per_element
            table = m.table_bits[AUTO_RANK] / m.elements if m.elements else None
            lines.append(f"{_fit(self.grouping_label(g), gw):<{gw}} {m.models:>8} {_num(h):>6} "
                         f"{_num(m.per_element(AUTO), 7)} {_num(bpe, 7)} {_num(table, 7)} "
                         f"{_num(None if bpe is None else bpe - h, 7)} "
                         f"{'-' if not bpe else f'{h / bpe:.1%}':>7}")
        lines += textwrap.wrap(self.grouping_answer(), width - 1)
        lines += textwrap.wrap(TABLE_NOTE, width - 1)
        return "\n".join(lines)


def _row(question: str, group: str, c: Cost) -> dict:
    row = {"question": question, "group": group, "models": c.models, "elements": c.elements,
           "entropy_per_element": c.entropy_per_element}
    for i, (name, _, _) in enumerate(VARIANTS):
        row[f"bits_per_element[{name}]"] = c.per_element(i)
        if "rank" in name:
            row[f"table_bits_per_element[{name}]"] = c.table_bits[i] / c.elements if c.elements else None
    return row


def _saving(c: Cost) -> str:
    auto, rank = c.per_element(AUTO), c.per_element(AUTO_RANK)
    if auto is None:
        return "-"
    return f"{auto - rank:+.2f} {_pct(auto - rank, auto):>5}"


def _change(before: float, after: float, than: str) -> str:
    """How ``after`` compares with ``before``, in words: "saves 0.42 bits/element (11%) over X"."""
    d = before - after
    if d > 0:
        return f"saves {d:.2f} bits/element ({_pct(d, before)}) over {than}"
    return f"costs {-d:.2f} bits/element ({_pct(-d, before)}) more than {than}"


def _pct(part: float, whole: float) -> str:
    if not whole:
        return "-"
    share = part / whole
    return f"{share:.1%}" if abs(share) < 0.1 else f"{share:.0%}"


def _num(x: float | None, w: int = 0) -> str:
    return f"{'-' if x is None else f'{x:.2f}':>{w}}"


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _fit(text: str, w: int) -> str:
    """``text`` in ``w`` columns: the end kept (where module names differ)."""
    return text if len(text) <= w else "…" + text[len(text) - w + 1:]
