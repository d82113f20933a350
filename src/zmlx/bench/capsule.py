"""Capsules: versioned JSON records of a measurement, with the environment that produced it.

Every benchmark and validation run writes one. Claims in docs cite a capsule file; nothing is
typed in by hand. :func:`write` fills in the command line, git commit, package versions,
backend and device; :func:`load` validates the schema.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

SCHEMA = "zmlx.capsule"
SCHEMA_VERSION = 1
REQUIRED = ("schema", "schema_version", "kind", "created", "command", "env", "results")


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(pkg: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(pkg)
    except Exception:  # not installed, or installed without metadata
        return None


def environment() -> dict[str, Any]:
    """Versions, backend and device of this process."""
    import mlx.core as mx

    from ..core.backend import backend, device_name

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mlx": mx.__version__,
        "mlx_lm": _version("mlx-lm"),
        "zmlx": _version("zmlx"),
        "numpy": _version("numpy"),
        "backend": backend(),
        "device": device_name(),
        "git_commit": _git_commit(),
    }
    try:
        from .. import __version__

        env["zmlx"] = env["zmlx"] or __version__
    except ImportError:
        pass
    return env


def make(kind: str, results: Any, **extra: Any) -> dict[str, Any]:
    """Build a capsule dict (see :data:`REQUIRED` for the fields every capsule has)."""
    cap = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv else "",
        "env": environment(),
        "results": results,
    }
    cap.update(extra)
    return cap


def validate(cap: dict[str, Any]) -> dict[str, Any]:
    """Check a capsule's schema; returns it, raises ``ValueError`` naming what is wrong."""
    if not isinstance(cap, dict):
        raise ValueError(f"[capsule] expected a JSON object, got {type(cap).__name__}")
    missing = [k for k in REQUIRED if k not in cap]
    if missing:
        raise ValueError(f"[capsule] missing field(s) {missing}")
    if cap["schema"] != SCHEMA:
        raise ValueError(f"[capsule] expected schema {SCHEMA!r}, got {cap['schema']!r}")
    if not isinstance(cap["schema_version"], int) or cap["schema_version"] > SCHEMA_VERSION:
        raise ValueError(f"[capsule] unsupported schema_version {cap['schema_version']!r}")
    for k in ("backend", "device", "mlx"):
        if k not in cap["env"]:
            raise ValueError(f"[capsule] env lacks {k!r}")
    return cap


def write(cap: dict[str, Any], path: str | os.PathLike) -> Path:
    """Validate and write ``cap`` as pretty JSON; returns the path."""
    validate(cap)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(cap, indent=2, sort_keys=False, default=str) + "\n")
    return p


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a capsule."""
    return validate(json.loads(Path(path).read_text()))
