"""Reading a session: a table of its candidates, and exporting the best one as an override.

:func:`export` writes the evidence as a capsule (kind ``kernel_bench``: the timings of the
catalog kernel, the candidate and stock MLX, plus the candidate's knobs and checks) and adds
``(op, backend, shape class) -> knobs`` with that capsule's path to the override registry
(:mod:`zmlx.core.overrides`), which the op then consults. Only knobs go into the registry: a
body rewrite is code, and belongs in the op's family file after review (its source is in the
session).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..bench import capsule
from ..bench.table import Table, num
from ..core import overrides
from .session import Node, Session


def _knobs_text(node: Node, defaults: dict[str, Any]) -> str:
    diff = {k: v for k, v in node.knobs.items() if defaults.get(k) != v}
    return " ".join(f"{k}={v}" for k, v in diff.items()) or "defaults"


def _eval_us(node: Node, name: str) -> float | None:
    t = node.timing.get("timings", {}).get(name, {})
    return t.get("median_eval_us")


def summary(session: Session) -> dict[str, Any]:
    """Counts, the best candidate and the timing state of a session (for ``--json``)."""
    counts: dict[str, int] = {}
    for n in session.nodes:
        counts[n.status] = counts.get(n.status, 0) + 1
    best = session.best()
    timed = session.timed()
    return {
        "op": session.op,
        "case": session.case,
        "dtype": session.dtype,
        "runner": session.runner,
        "device": session.device,
        "shape_class": session.shape_class,
        "candidates": len(session.nodes),
        "status": counts,
        "timed": timed,
        "timing_note": None if timed else _untimed_note(session),
        "best": None if best is None else {
            "node": best.id, "knobs": best.knobs, "rewrite": best.body is not None,
            "speedup": best.speedup, "vs_stock": best.timing.get("vs_stock"),
        },
    }  # fmt: skip


def _untimed_note(session: Session) -> str:
    skipped = {n.timing.get("skipped") for n in session.nodes if n.timing.get("skipped")}
    return "; ".join(sorted(s for s in skipped if s)) or "no candidate was timed"


def table(session: Session, top: int | None = None) -> Table:
    """Candidates, best first: knobs changed from the defaults, status, checks, speed."""
    nodes = sorted(session.nodes, key=lambda n: (-n.value(), n.id))[: top or None]
    rows = []
    for n in nodes:
        passed = sum(c.get("ok", False) for c in n.checks)
        why = "; ".join(n.reasons) or n.error
        rows.append([
            str(n.id), "-" if n.parent is None else str(n.parent), n.source,
            _knobs_text(n, session.defaults), (n.to_dict()["body_sha"] or "-"), n.status,
            f"{passed}/{len(n.checks)}" if n.checks else "-",
            num(_eval_us(n, "variant"), 2), num(n.speedup, 2, "x"),
            num(n.timing.get("vs_stock"), 2, "x"), str(n.visits), num(n.q, 3),
            (why[:60] + "...") if len(why) > 60 else why,
        ])  # fmt: skip
    title = (
        f"discover {session.op} at {session.case} ({session.dtype}, class {session.shape_class})"
        f" on {session.device} [{session.runner}]"
    )
    if not session.timed():
        title += f"\ntiming skipped: {_untimed_note(session)}"
    headers = ["id", "parent", "from", "knobs", "rewrite", "status", "checks", "device us",
               "vs catalog", "vs stock", "visits", "Q", "why"]  # fmt: skip
    return Table(title, headers, rows)


def export(
    session_path: str | os.PathLike,
    *,
    node_id: int | None = None,
    registry: str | os.PathLike | None = None,
    capsule_path: str | os.PathLike | None = None,
    allow_untimed: bool = False,
    min_speedup: float = 1.0,
) -> dict[str, Any] | None:
    """Register the best (or the given) candidate's knobs as an override, with its evidence.

    Args:
        session_path: the session file.
        node_id: the candidate to export (default: the fastest passing knobs-only candidate).
        registry: the registry file (default: the one ops read, see :mod:`zmlx.core.overrides`).
        capsule_path: where the evidence capsule goes (default: ``benchmarks/capsules/``).
        allow_untimed: export a candidate that was only checked (the CPU emulator), not timed.
        min_speedup: the smallest speed-up over the catalog kernel worth an override.

    Returns:
        The registry entry, or None when the catalog kernel is already the best candidate.
    """
    session = Session.load(session_path)
    if node_id is None:
        node = session.best(knobs_only=True)
        if node is None:
            raise ValueError(f"[discover] {session_path}: no candidate passed its checks")
    else:
        if not 0 <= node_id < len(session.nodes):
            raise ValueError(f"[discover] no candidate {node_id} (0..{len(session.nodes) - 1})")
        node = session.nodes[node_id]
    if node.status != "ok":
        raise ValueError(f"[discover] candidate {node.id} is {node.status}, not ok")
    if node.body is not None:
        raise ValueError(
            f"[discover] candidate {node.id} rewrites the kernel body: the registry takes knobs "
            "only; review its source (in the session) and adopt it in the op's family file"
        )
    if node.knobs == session.defaults:
        return None
    if node.speedup is None and not allow_untimed:
        raise ValueError(
            f"[discover] candidate {node.id} was not timed ({_untimed_note(session)}); run the "
            "search on a GPU, or pass --allow-untimed"
        )
    if node.speedup is not None and node.speedup < min_speedup:
        raise ValueError(
            f"[discover] candidate {node.id} is {node.speedup:.3f}x the catalog kernel "
            f"(below --min-speedup {min_speedup})"
        )
    results = {
        "op": session.op,
        "case": session.case,
        "dtype": session.dtype,
        "timings": node.timing.get("timings", {}),
        "discover": {
            "session": Path(session_path).name,
            "node": node.id,
            "knobs": node.knobs,
            "defaults": session.defaults,
            "shape_class": session.shape_class,
            "runner": session.runner,
            "speedup": node.speedup,
            "vs_stock": node.timing.get("vs_stock"),
            "timing": "measured" if node.speedup is not None else _untimed_note(session),
            "checks": node.checks,
        },
    }
    cap = capsule.make("kernel_bench", results)
    path = capsule.save(cap, capsule_path, f"discover-{session.op}-{session.case}")
    entry = {
        "op": session.op,
        "backend": session.backend,
        "shape_class": session.shape_class,
        "knobs": node.knobs,
        "evidence": str(path),
        "speedup": node.speedup,
        "timed": node.speedup is not None,
        "device": session.device,
        "case": session.case,
        "dtype": session.dtype,
        "created": cap["created"],
    }
    entry["registry"] = str(overrides.add_entry(entry, registry))
    return entry
