"""``matrix report``: the ledger as a heatmap (PNG) and a markdown table.

Rows are models (catalog order), columns are backend x pattern set; the newest run of each
cell counts. The left panel shows the decode speed-up (patched / stock, 1.0 = no change), the
right panel the teacher-forced top-1 agreement with PASS/FAIL of the fidelity check.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..bench.table import Table, format_markdown, num
from . import ledger
from .models import CATALOG

MD_HEADERS = [
    "model",
    "backend",
    "device",
    "patterns",
    "fidelity",
    "greedy",
    "top-1",
    "decode x",
    "prefill x",
    "decode tok/s (stock -> patched)",
    "modules",
    "date",
]


def _order(rows: list[dict[str, Any]]) -> list[str]:
    known = [e.name for e in CATALOG]
    models = {r["model"] for r in rows}
    return [m for m in known if m in models] + sorted(models - set(known))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The newest row per cell as a markdown table (errors included, with their message)."""
    rows = ledger.latest(rows)
    rank = {m: i for i, m in enumerate(_order(rows))}
    rows.sort(key=lambda r: (rank[r["model"]], r["backend"], r["pattern_set"]))
    out = []
    for r in rows:
        date = str(r.get("time", ""))[:10]
        if r.get("status") != "ok":
            err = str(r.get("error", ""))[:80]
            out.append([r["model"], r["backend"], r.get("device", ""), r["pattern_set"],
                        "ERROR", "-", "-", "-", "-", err, "-", date])  # fmt: skip
            continue
        tok = f"{num(r['decode_tok_s_stock'], 1)} -> {num(r['decode_tok_s_patched'], 1)}"
        out.append([
            r["model"], r["backend"], r.get("device", ""), r["pattern_set"], r["fidelity"],
            r["greedy_identical"], num(100 * r["top1_agreement"], 2, "%"),
            num(r["decode_speedup"], 3, "x"), num(r["prefill_speedup"], 3, "x"), tok,
            str(r["modules_patched"]), date,
        ])  # fmt: skip
    return format_markdown(Table("zmlx model matrix", MD_HEADERS, out))


def grid(rows: list[dict[str, Any]], value: str) -> tuple[list[str], list[str], list[list]]:
    """``(models, columns, values)``: the newest ``value`` per model x (backend, pattern set)."""
    rows = [r for r in ledger.latest(rows) if r.get("status") == "ok"]
    models = _order(rows)
    cols = sorted({f"{r['backend']} / {r['pattern_set']}" for r in rows})
    vals: list[list] = [[math.nan] * len(cols) for _ in models]
    for r in rows:
        col = cols.index(f"{r['backend']} / {r['pattern_set']}")
        vals[models.index(r["model"])][col] = r[value]
    return models, cols, vals


def heatmap(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write the speed-up and fidelity heatmap PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    models, cols, speed = grid(rows, "decode_speedup")
    if not models:
        raise ValueError("[matrix report] the ledger has no successful runs to plot")
    _, _, top1 = grid(rows, "top1_agreement")
    _, _, verdict = grid(rows, "fidelity")
    s, t = np.array(speed, dtype=float), np.array(top1, dtype=float)
    lo, hi = np.nanmin(s), np.nanmax(s)
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 0.9), vmax=max(hi, 1.1))
    height = 1.6 + 0.32 * len(models)
    width = 4.5 + 2.4 * len(cols)
    fig, axes = plt.subplots(1, 2, figsize=(width, height), constrained_layout=True)
    panels = [
        (axes[0], s, "RdYlGn", norm, "decode speed-up (patched / stock)",
         lambda i, j: f"{s[i, j]:.2f}x"),
        (axes[1], t, "RdYlGn", None, "fidelity: teacher-forced top-1 agreement",
         lambda i, j: f"{100 * t[i, j]:.1f}% {verdict[i][j]}"),
    ]  # fmt: skip
    for ax, data, cmap, nrm, title, label in panels:
        cm = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")  # grey: never run
        kw = {"norm": nrm} if nrm is not None else {"vmin": 0.9, "vmax": 1.0}
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cm, aspect="auto", **kw)
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(models)), models, fontsize=8)
        ax.set_title(title, fontsize=10)
        for i in range(len(models)):
            for j in range(len(cols)):
                if not math.isnan(data[i, j]):
                    ax.text(j, i, label(i, j), ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8)
    devices = sorted({r.get("device", "?") for r in ledger.latest(rows) if r.get("status") == "ok"})
    fig.suptitle("zmlx model matrix  |  " + ", ".join(devices), fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write(rows: list[dict[str, Any]], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``matrix_heatmap.png`` and ``matrix.md`` under ``out_dir``."""
    d = Path(out_dir)
    png = heatmap(rows, d / "matrix_heatmap.png")
    md = d / "matrix.md"
    md.write_text(markdown(rows) + f"\n\n![heatmap]({png.name})\n")
    return png, md
