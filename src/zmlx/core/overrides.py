"""Launch knobs and their overrides: what an op may tune without changing its kernel's meaning.

Some ops take *knobs*: launch choices such as threads per group or elements per thread that
change speed, never results. An op declares them once as a :class:`KnobSpace` and asks
:func:`lookup` on each call whether an override applies to it; without one it keeps its
built-in defaults. Overrides come from two places:

* the registry file, ``zmlx/kernels/overrides/overrides.json`` (written by
  ``python -m zmlx.discover export``, each entry with its evidence capsule), keyed by
  ``(op, backend, shape class)``; ``ZMLX_OVERRIDES=PATH`` reads another file and
  ``ZMLX_OVERRIDES=off`` ignores every entry;
* :func:`forcing`, a context manager that makes ops use given knobs in one block (the kernel
  search evaluates candidates through the op's own code this way).

An op validates the knobs it gets (:meth:`KnobSpace.resolve`); knobs that do not apply to a
shape fall back to the defaults, so a stale registry can slow an op down but never break it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGISTRY_SCHEMA = "zmlx.overrides"
DEFAULT_REGISTRY = Path(__file__).resolve().parents[1] / "kernels" / "overrides" / "overrides.json"

Knobs = Mapping[str, Any]


@dataclass(frozen=True)
class KnobSpace:
    """The knobs an op (or a kind of op) takes.

    Attributes:
        name: what kind of kernel this is (``"elementwise"``, ``"norm"``); for messages.
        values: knob name -> allowed values, in an order where neighbours are similar.
        shape_class: op arguments -> the shape class overrides are keyed by (``"large"``,
            ``"d4096"``).
        defaults: op arguments -> the knobs the op uses there without an override.
        check: ``(args, knobs) -> reason`` when ``knobs`` cannot run at that shape, else None.
        describe: one line on what the knobs do (for proposers and datasets).
    """

    name: str
    values: Mapping[str, tuple]
    shape_class: Callable[[Sequence[Any]], str]
    defaults: Callable[[Sequence[Any]], dict[str, Any]]
    check: Callable[[Sequence[Any], Knobs], str | None] = lambda args, knobs: None
    describe: str = ""
    ops: tuple[str, ...] = field(default=())

    def invalid(self, knobs: Knobs) -> str | None:
        """Why ``knobs`` are outside this space (unknown name or value), or None."""
        for k, v in knobs.items():
            if k not in self.values:
                return f"unknown knob {k!r} (known: {sorted(self.values)})"
            if v not in self.values[k] or type(v) is not type(self.values[k][0]):
                return f"knob {k}={v!r} is not one of {list(self.values[k])}"
        return None

    def resolve(self, args: Sequence[Any], knobs: Knobs | None) -> dict[str, Any]:
        """``knobs`` completed with the defaults at ``args``; the defaults alone when
        ``knobs`` are invalid or do not apply there."""
        base = self.defaults(args)
        if not knobs:
            return base
        merged = {**base, **knobs}
        if self.invalid(knobs) is not None or self.check(args, merged) is not None:
            return base
        return merged


_SPACES: dict[str, KnobSpace] = {}


def register_space(space: KnobSpace, ops: Sequence[str] = ()) -> KnobSpace:
    """Declare that the ops named in ``ops`` (or ``space.ops``) consult ``space``."""
    for op in tuple(ops) or space.ops:
        _SPACES[op] = space
    return space


def space_of(op: str) -> KnobSpace | None:
    """The knob space op ``op`` registered, or None (the op takes no knobs)."""
    return _SPACES.get(op)


# ------------------------------------------------------------------------------------------
# Overrides

_FORCED: contextvars.ContextVar[dict[str, dict] | None] = contextvars.ContextVar(
    "zmlx_forced_knobs", default=None
)
_TABLE: dict[tuple[str, str, str], dict] | None = None


@contextlib.contextmanager
def forcing(knobs_by_op: Mapping[str, Knobs]) -> Iterator[None]:
    """Make each op named in ``knobs_by_op`` use those knobs inside the block, at every shape
    and on every backend (the registry is not consulted for them)."""
    current = dict(_FORCED.get() or {})
    current.update({op: dict(k) for op, k in knobs_by_op.items()})
    token = _FORCED.set(current)
    try:
        yield
    finally:
        _FORCED.reset(token)


def registry_path() -> Path | None:
    """The registry file in use (``ZMLX_OVERRIDES``), or None when overrides are off."""
    env = os.environ.get("ZMLX_OVERRIDES", "")
    if env.lower() in ("off", "0", "none"):
        return None
    return Path(env) if env else DEFAULT_REGISTRY


def read_registry(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The registry document at ``path`` (default :func:`registry_path`); empty when absent."""
    p = Path(path) if path is not None else registry_path()
    if p is None or not p.is_file():
        return {"schema": REGISTRY_SCHEMA, "version": 1, "entries": []}
    doc = json.loads(p.read_text())
    if not isinstance(doc, dict) or doc.get("schema") != REGISTRY_SCHEMA:
        raise ValueError(f"[overrides] {p}: expected a {REGISTRY_SCHEMA!r} document")
    if not isinstance(doc.get("entries"), list):
        raise ValueError(f"[overrides] {p}: expected a list of entries")
    return doc


def reload(path: str | os.PathLike | None = None) -> int:
    """(Re)read the registry; returns how many entries are active."""
    global _TABLE
    doc = read_registry(path) if path is not None or registry_path() is not None else None
    table: dict[tuple[str, str, str], dict] = {}
    for e in (doc or {}).get("entries", []):
        table[(e["op"], e["backend"], e["shape_class"])] = dict(e["knobs"])
    _TABLE = table
    return len(table)


def lookup(op: str, shape_class: str | Callable[[], str], backend: str | None = None):
    """The knobs to use for ``op`` at ``shape_class``, or None for the op's defaults.

    ``shape_class`` may be a callable (computed only when the registry has entries);
    ``backend`` defaults to :func:`zmlx.backend`. Cheap when nothing is registered: one
    context-variable read and one truth test.
    """
    forced = _FORCED.get()
    if forced is not None and op in forced:
        return forced[op]
    table = _TABLE
    if table is None:
        reload()
        table = _TABLE
    if not table:
        return None
    if backend is None:
        from .backend import backend as _backend

        backend = _backend()
    cls = shape_class() if callable(shape_class) else shape_class
    return table.get((op, backend, cls)) or table.get((op, backend, "*"))


def add_entry(entry: Mapping[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Add (or replace) one registry entry and write the file; returns its path.

    ``entry`` needs ``op``, ``backend``, ``shape_class`` and ``knobs``; ``evidence`` (the
    capsule path) and anything else are kept as given.
    """
    missing = [k for k in ("op", "backend", "shape_class", "knobs") if k not in entry]
    if missing:
        raise ValueError(f"[overrides] entry is missing {missing}")
    p = Path(path) if path is not None else (registry_path() or DEFAULT_REGISTRY)
    doc = read_registry(p)
    key = (entry["op"], entry["backend"], entry["shape_class"])
    doc["entries"] = [
        e for e in doc["entries"] if (e["op"], e["backend"], e["shape_class"]) != key
    ] + [dict(entry)]
    doc["entries"].sort(key=lambda e: (e["op"], e["backend"], e["shape_class"]))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=2) + "\n")
    if path is None or p == registry_path():
        reload()
    return p
