"""Tables as data (title, headers, rows) and their text and markdown renderings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    """A titled table of already formatted cells (``rows`` of strings)."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "headers": self.headers, "rows": self.rows}


def _numeric(cell: str) -> bool:
    c = cell.strip().rstrip("x%").replace(",", "")
    if not c or c == "-":
        return False
    c = c[1:] if c[0] in "+-" else c  # a sign, not a spread
    try:
        float(c.split(" ")[0].split("-")[0] or "x")
        return True
    except ValueError:
        return False


def format_text(table: Table) -> str:
    """Aligned plain text: numbers right-aligned, everything else left-aligned."""
    cols = (
        list(zip(*([table.headers] + table.rows))) if table.rows else [[h] for h in table.headers]
    )
    widths = [max(len(str(c)) for c in col) for col in cols]
    right = [
        bool(table.rows) and all(_numeric(r[i]) or r[i] in ("", "-") for r in table.rows)
        for i in range(len(table.headers))
    ]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "  ".join(out).rstrip()

    lines = [table.title] if table.title else []
    lines += [line(table.headers), line(["-" * w for w in widths])]
    lines += [line(r) for r in table.rows]
    return "\n".join(lines)


def format_markdown(table: Table) -> str:
    """A GitHub markdown table (``|`` in cells escaped)."""

    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [f"**{table.title}**", ""] if table.title else []
    lines += [row(table.headers), row(["---"] * len(table.headers))]
    lines += [row(r) for r in table.rows]
    return "\n".join(lines)


def num(x: Any, digits: int = 2, suffix: str = "") -> str:
    """A number with ``digits`` decimals (``-`` for None/NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}{suffix}"


def spread(lo: Any, hi: Any, digits: int = 1) -> str:
    """``lo-hi`` of a measurement (``-`` when unknown)."""
    if lo is None or hi is None:
        return "-"
    return f"{lo:,.{digits}f}-{hi:,.{digits}f}"
