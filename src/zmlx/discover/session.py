"""A search session: the tree of candidates, their evidence, and its JSON file.

Each :class:`Node` is one candidate (knobs and an optional body rewrite), with who proposed it,
its prior, its PUCT statistics (visits, value sum) and what happened to it: ``ok``,
``incorrect``, ``rejected`` (static checks, before compiling), ``error`` or ``timeout``, with
the checks and timings. Node 0 is the catalog kernel as it ships (the op's default knobs).
The file is rewritten after every step, so an interrupted search resumes where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .target import body_sha, candidate_key

SCHEMA = "zmlx.discover.session"
VERSION = 1
MAX_VALUE_SPEEDUP = 2.0  # speed-ups above this count as this much (one lucky run cannot dominate)


@dataclass
class Node:
    """One candidate in the search tree."""

    id: int
    parent: int | None
    knobs: dict[str, Any]
    body: str | None = None
    source: str = "root"
    note: str = ""
    prior: float = 1.0
    visits: int = 0
    value_sum: float = 0.0
    status: str = "pending"
    reasons: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    children: list[int] = field(default_factory=list)
    exhausted: bool = False

    @property
    def key(self) -> str:
        return candidate_key(self.knobs, self.body)

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def speedup(self) -> float | None:
        """Device time of the catalog kernel over this candidate's (None when untimed)."""
        s = self.timing.get("speedup")
        return float(s) if isinstance(s, (int, float)) and math.isfinite(s) else None

    def value(self) -> float:
        """The reward PUCT backs up: 0 for a failure, else the speed-up scaled into [0, 1]
        (1.0x gives 0.5); an untimed pass gives 0.5."""
        if self.status != "ok":
            return 0.0
        s = self.speedup
        return 0.5 if s is None else min(s, MAX_VALUE_SPEEDUP) / MAX_VALUE_SPEEDUP

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["body_sha"] = body_sha(self.body)
        return d


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Session:
    """The state of one search (see the module docstring)."""

    op: str
    case: str
    dtype: str
    runner: str
    backend: str
    device: str
    shape_class: str
    defaults: dict[str, Any]
    proposer: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    c_puct: float = 1.4
    checks: dict[str, Any] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)

    # -- tree ----------------------------------------------------------------------------
    def add(self, parent: Node | None, knobs: dict, body: str | None = None, **kw) -> Node:
        node = Node(len(self.nodes), None if parent is None else parent.id, dict(knobs), body, **kw)
        self.nodes.append(node)
        if parent is not None:
            parent.children.append(node.id)
        return node

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def keys(self) -> set[str]:
        return {n.key for n in self.nodes}

    def path_to(self, node: Node) -> list[Node]:
        out = [node]
        while out[-1].parent is not None:
            out.append(self.nodes[out[-1].parent])
        return out[::-1]

    def timed(self) -> bool:
        return any(n.speedup is not None for n in self.nodes)

    def best(self, *, knobs_only: bool = False, include_root: bool = True) -> Node | None:
        """The passing candidate with the largest speed-up (the first one when untimed)."""
        ok = [n for n in self.nodes if n.status == "ok"]
        ok = [n for n in ok if (include_root or n.parent is not None)]
        ok = [n for n in ok if not (knobs_only and n.body is not None)]
        if not ok:
            return None
        return max(ok, key=lambda n: (n.speedup if n.speedup is not None else 0.0, -n.id))

    def event(self, kind: str, **data: Any) -> None:
        self.events.append({"kind": kind, "at": _now(), **data})

    # -- file ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "nodes"}
        d["nodes"] = [n.to_dict() for n in self.nodes]
        return {"schema": SCHEMA, "version": VERSION, **d}

    def save(self, path: str | os.PathLike) -> Path:
        self.updated = _now()
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=str) + "\n")
        os.replace(tmp, p)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> Session:
        p = Path(path)
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"[discover] {p}: not JSON ({e})") from None
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
            raise ValueError(f"[discover] {p}: not a discover session ({SCHEMA})")
        if raw.get("version", 0) > VERSION:
            raise ValueError(f"[discover] {p}: session version {raw['version']} is too new")
        nodes = [
            Node(**{k: v for k, v in n.items() if k in Node.__dataclass_fields__})
            for n in raw.pop("nodes")
        ]
        fields = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**fields, nodes=nodes)
