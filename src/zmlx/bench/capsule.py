"""Capsules: versioned JSON records of a measurement, with the environment that produced it.

Every benchmark and validation run writes one. Claims in docs cite a capsule file; nothing is
typed in by hand. :func:`make` fills in the command line, git commit, package versions,
backend and device; :func:`write` and :func:`load` validate the schema
(:mod:`zmlx.bench.schema`: the fields every capsule has and the ``results`` of each kind).
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

from .schema import ENV, SCHEMA, SCHEMA_VERSION, TOP_LEVEL, check_fields, check_results

REQUIRED = tuple(TOP_LEVEL)


def _git_commit() -> str | None:
    # A copy of the tree without .git (a remote GPU run) can pass the commit in.
    if os.environ.get("ZMLX_GIT_COMMIT"):
        return os.environ["ZMLX_GIT_COMMIT"]
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


def _command() -> str:
    """The command line, with ``python -m zmlx.<module>`` for zmlx's own entry points."""
    if not sys.argv:
        return ""
    p = Path(sys.argv[0])
    prog = p.name
    if "zmlx" in p.parts[:-1] and p.suffix == ".py":
        i = len(p.parts) - 1 - p.parts[::-1].index("zmlx")
        mod = [*p.parts[i:-1], p.stem] if p.stem != "__main__" else list(p.parts[i:-1])
        prog = "python -m " + ".".join(mod)
    # Absolute paths name one machine's folders: keep only the file names.
    args = [Path(a).name if os.path.isabs(a) else a for a in sys.argv[1:]]
    return " ".join([prog, *args])


def make(kind: str, results: Any, **extra: Any) -> dict[str, Any]:
    """Build a capsule dict (see :data:`REQUIRED` for the fields every capsule has)."""
    cap = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": _command(),
        "env": environment(),
        "results": results,
    }
    cap.update(extra)
    return cap


def validate(cap: dict[str, Any]) -> dict[str, Any]:
    """Check a capsule's schema; returns it, raises ``ValueError`` naming what is wrong.

    Version 1 capsules get the top-level checks; version 2 adds the ``results`` fields of
    their kind (:data:`zmlx.bench.schema.KINDS`).
    """
    if not isinstance(cap, dict):
        raise ValueError(f"[capsule] expected a JSON object, got {type(cap).__name__}")
    missing = [k for k in REQUIRED if k not in cap]
    if missing:
        raise ValueError(f"[capsule] missing field(s) {missing}")
    if cap["schema"] != SCHEMA:
        raise ValueError(f"[capsule] expected schema {SCHEMA!r}, got {cap['schema']!r}")
    version = cap["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version:
        raise ValueError(f"[capsule] unsupported schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"[capsule] schema_version {version} is newer than this zmlx reads "
            f"({SCHEMA_VERSION}); upgrade zmlx"
        )
    check_fields(cap, TOP_LEVEL, "capsule")
    check_fields(cap["env"], ENV, "env")
    if version >= 2:
        check_results(cap["kind"], cap["results"])
    return cap


def write(cap: dict[str, Any], path: str | os.PathLike) -> Path:
    """Validate and write ``cap`` as pretty JSON; returns the path."""
    validate(cap)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(cap, indent=2, sort_keys=False, default=str) + "\n")
    return p


CAPSULE_DIR = Path("benchmarks") / "capsules"


def default_path(cap: dict[str, Any], name: str = "") -> Path:
    """``benchmarks/capsules/<kind>[-<name>]-<backend>-<UTC time>.json`` (relative to cwd)."""
    stamp = cap["created"].replace(":", "").replace("-", "").split("+")[0]
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    parts = [cap["kind"], safe, cap["env"]["backend"], stamp]
    return CAPSULE_DIR / ("-".join(p for p in parts if p) + ".json")


def save(cap: dict[str, Any], target: str | os.PathLike | None, name: str = "") -> Path | None:
    """Write ``cap`` to ``target``; ``None`` means :func:`default_path`, ``"-"`` stdout."""
    if str(target) == "-":
        validate(cap)
        print(json.dumps(cap, indent=2, default=str))
        return None
    return write(cap, default_path(cap, name) if target is None else target)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a capsule; errors name the file."""
    p = Path(path)
    try:
        return validate(json.loads(p.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"[capsule] {p}: not JSON ({e})") from None
    except ValueError as e:
        raise ValueError(f"{e} (in {p})") from None
