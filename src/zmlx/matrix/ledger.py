"""The matrix ledger: one JSON line per validate run, appended, never rewritten.

A row is made from a ``validate`` capsule (:func:`row_from_capsule`) or records why a run gave
none (:func:`error_row`). :func:`latest` keeps the newest row per (model, backend, pattern set).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import warnings
from pathlib import Path
from typing import Any

from .models import ModelEntry

DEFAULT_LEDGER = Path("benchmarks") / "matrix.jsonl"
KEYS = ("model", "backend", "pattern_set")


def pattern_set(patterns: list[str] | None) -> str:
    """``"default"`` (the safety table's choice) or the patterns joined with ``+``."""
    return "default" if patterns is None else ("+".join(sorted(patterns)) or "none")


def _base(entry: ModelEntry, source: str, patterns: list[str] | None) -> dict[str, Any]:
    return {
        "model": entry.name,
        "hf_id": entry.hf_id,
        "family": entry.family,
        "model_type": entry.model_type,
        "moe": entry.moe,
        "source": source,
        "pattern_set": pattern_set(patterns),
    }


def row_from_capsule(
    entry: ModelEntry, source: str, patterns: list[str] | None, cap: dict[str, Any], path: str
) -> dict[str, Any]:
    """A ledger row from a ``validate`` capsule written by ``python -m zmlx.validate``."""
    res, env = cap["results"], cap["env"]
    fid, tp, mem = res["fidelity"], res["throughput"], res["memory"]
    applied = sorted({p for _, p in res["patch"].get("replaced", [])})
    return {
        **_base(entry, source, patterns),
        "time": cap["created"],
        "status": "ok",
        "backend": env["backend"],
        "device": env["device"],
        "mlx": env["mlx"],
        "commit": env.get("git_commit"),
        "random_weights": res.get("random_weights", False),
        "patterns_applied": applied,
        "modules_patched": len(res["patch"].get("replaced", [])),
        "fidelity": "PASS" if fid["passed"] else "FAIL",
        "greedy_identical": f"{fid['greedy_identical']}/{fid['prompts']}",
        "top1_agreement": fid["top1_agreement"],
        "max_logit_diff": fid["max_logit_diff"],
        "decode_tok_s_stock": tp["decode"]["stock"]["median"],
        "decode_tok_s_patched": tp["decode"]["patched"]["median"],
        "decode_speedup": tp["decode"]["speedup"],
        "prefill_speedup": tp["prefill"]["speedup"],
        "peak_gb_stock": mem["stock_peak_bytes"] / 1e9,
        "peak_gb_patched": mem["patched_peak_bytes"] / 1e9,
        "capsule": path,
    }


def error_row(
    entry: ModelEntry, source: str, patterns: list[str] | None, backend: str, device: str,
    error: str,
) -> dict[str, Any]:  # fmt: skip
    """A ledger row for a run that produced no capsule."""
    return {
        **_base(entry, source, patterns),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "error",
        "backend": backend,
        "device": device,
        "error": error,
    }


def append(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row (one JSON line)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def read(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row; a line that is not a JSON object is skipped with a warning."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"[matrix] no ledger at {p}")
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or any(k not in row for k in KEYS):
            warnings.warn(f"[matrix] {p}:{i}: not a ledger row, skipped", stacklevel=2)
            continue
        rows.append(row)
    return rows


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest row per (model, backend, pattern set), in first-seen order."""
    out: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = tuple(r[k] for k in KEYS)
        if key not in out or str(r.get("time", "")) >= str(out[key].get("time", "")):
            out[key] = r
    return list(out.values())
