"""``matrix run``: validate each catalog model that is available here, one ledger row per run.

A model is available when its checkpoint is on this machine (the Hugging Face cache, looked up
offline, or a folder under ``--models-dir``) or when the zoo has its architecture
(``zoo:NAME``: a tiny fixture or random weights, see :mod:`zmlx.validate`). Each run is a
separate ``python -m zmlx.validate`` process, so a crash or an out-of-memory run costs one row,
not the sweep, and every model starts from an empty memory pool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import ledger
from .models import ModelEntry

SOURCES = ("auto", "local", "zoo")


@dataclass
class Plan:
    """What ``matrix run`` will do for one catalog entry."""

    entry: ModelEntry
    source: str | None  # the MODEL argument of zmlx.validate, or None to skip
    why: str = ""


def local_path(entry: ModelEntry, models_dir: str | None = None) -> str | None:
    """The checkpoint folder of ``entry`` on this machine, or None (never downloads)."""
    if models_dir:
        for name in (entry.hf_id, entry.hf_id.split("/")[-1]):
            p = Path(models_dir) / name
            if (p / "config.json").is_file():
                return str(p)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(entry.hf_id, "config.json")
    return str(Path(hit).parent) if isinstance(hit, str) else None


def plan(
    entries: list[ModelEntry], source: str = "auto", models_dir: str | None = None
) -> list[Plan]:
    """Decide, per entry, what to validate: its local checkpoint, its zoo twin, or nothing."""
    if source not in SOURCES:
        raise ValueError(f"[matrix] expected source in {SOURCES}, got {source!r}")
    out = []
    for e in entries:
        local = local_path(e, models_dir) if source in ("auto", "local") else None
        if local:
            out.append(Plan(e, local))
        elif source in ("auto", "zoo") and e.zoo:
            out.append(Plan(e, f"zoo:{e.zoo}"))
        else:
            why = "not in the local cache" + ("" if e.zoo else " and no zoo config")
            out.append(Plan(e, None, why))
    return out


def validate_command(
    model: str, capsule_path: str, extra: list[str], patterns: list[str] | None
) -> list[str]:
    cmd = [sys.executable, "-m", "zmlx.validate", model, "--json", capsule_path, *extra]
    if patterns is not None:
        cmd += ["--patterns", *patterns]
    return cmd


def run_one(
    p: Plan,
    *,
    ledger_path: str,
    capsule_dir: str,
    extra: list[str] = (),
    patterns: list[str] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Validate one planned model in a subprocess and append its ledger row; returns the row."""
    from ..bench import capsule
    from ..core.backend import backend, device_name

    assert p.source is not None
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in p.entry.name)
    out = Path(capsule_dir) / f"validate-{safe}-{ledger.pattern_set(patterns)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()  # a stale capsule must not pass for this run's
    cmd = validate_command(p.source, str(out), list(extra), patterns)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc, err = -1, f"timed out after {timeout} s"
    if rc in (0, 1) and out.is_file():  # 1: ran, fidelity failed; still a full row
        row = ledger.row_from_capsule(p.entry, p.source, patterns, capsule.load(out), str(out))
    else:
        row = ledger.error_row(p.entry, p.source, patterns, backend(), device_name(), err)
    ledger.append(ledger_path, row)
    return row


def summary(row: dict[str, Any]) -> str:
    """One line per run for the console."""
    if row["status"] != "ok":
        return f"{row['model']:<36} ERROR {row.get('error', '')}"
    return (
        f"{row['model']:<36} {row['fidelity']} top-1 {100 * row['top1_agreement']:.1f}%  "
        f"decode {row['decode_speedup']:.3f}x  prefill {row['prefill_speedup']:.3f}x  "
        f"({row['modules_patched']} modules)"
    )


def dumps(plans: list[Plan]) -> str:
    return json.dumps(
        [{"model": p.entry.name, "source": p.source, "skip": p.why} for p in plans], indent=2
    )
