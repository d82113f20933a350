"""Evaluate kernel templates over a grid of knobs: one record per (op, shape, dtype, knobs).

Each op that takes launch knobs (:func:`zmlx.discover.searchable`) is a template: its kernel
body with template constants and launch geometry set by the knobs. Every point of the grid goes
through the same path as a search candidate (:func:`zmlx.discover.search.evaluate_candidate`):
static checks, correctness against the op's reference on several shapes and dtypes (on the
CPU emulator here, on the GPU there) and, on a GPU, timing against the catalog kernel and
stock MLX at each benchmark shape. The output folder holds ``manifest.json`` and
``results.jsonl``.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.backend import device_name
from ..discover.evaluator import Evaluator
from ..discover.search import evaluate_candidate
from ..discover.target import Target, dtype_name, input_size

RESULTS = "results.jsonl"
MANIFEST = "manifest.json"


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """``["group=64,128", "warp=true"]`` -> ``{"group": [64, 128], "warp": [True]}``."""
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"[foundry] expected KNOB=V1,V2,... in --grid, got {item!r}")
        name, values = item.split("=", 1)
        parsed = []
        for v in values.split(","):
            v = v.strip().lower()
            if v in ("true", "false"):
                parsed.append(v == "true")
            else:
                try:
                    parsed.append(int(v))
                except ValueError:
                    raise ValueError(f"[foundry] {name}: {v!r} is not an integer or bool") from None
        grid[name.strip()] = parsed
    return grid


def points(target: Target, grid: Mapping[str, list] | None) -> list[dict[str, Any]]:
    """Knob settings to evaluate for ``target``: the whole space when ``grid`` is None, else
    the grid's values for the knobs it names (the defaults for the others)."""
    space = target.space.values
    axes = []
    for name, values in space.items():
        if grid is None:
            axes.append([(name, v) for v in values])
        elif name in grid:
            axes.append([(name, v) for v in grid[name]])
        else:
            axes.append([(name, target.defaults[name])])
    return [dict(p) for p in itertools.product(*axes)]


def _targets(op: str, dtype: str, emulated: bool, cases: Sequence[str]) -> list[Target]:
    """The shapes ``op`` is evaluated at: its bench cases (or ``cases``); on the emulator only
    the first that is small enough, else its first small test case."""
    first = Target(op, None, dtype)
    known = [str(c["id"]) for c in list(first.spec.bench_cases) + list(first.spec.cases)]
    ids = (
        [c for c in cases if c in known]
        if cases
        else [str(c["id"]) for c in first.spec.bench_cases]
    )
    if cases and not ids:
        raise ValueError(f"[foundry] {op} has none of the cases {list(cases)}; it has {known}")
    out = []
    for cid in ids:
        t = first if cid == first.case else Target(op, cid, dtype)
        if emulated and input_size(t.args0) > (1 << 15):
            continue  # too large for the emulator (a fiber per GPU thread)
        out.append(t)
        if emulated:
            break  # no timing on the CPU: one shape per op; the checks cover the others
    if not out and emulated:
        small = [c for c in first.spec.cases if not c.get("reference_only")]
        out.append(Target(op, str(small[0]["id"]), dtype))
    return out


def run(
    ops: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    grid: Mapping[str, list] | None = None,
    cases: Sequence[str] = (),
    dtype: str = "float16",
    check_dtypes: Sequence[str] | None = None,
    runner: str,
    evaluator: Evaluator,
    seed: int = 0,
    on_record: Callable[[dict], Any] | None = None,
    **timing: Any,
) -> dict[str, Any]:
    """Evaluate every op over the grid; writes ``results.jsonl`` and ``manifest.json``.

    Args:
        ops: catalog op names that take knobs.
        out_dir: the output folder (created; existing results are replaced).
        grid: knob -> values (None: each op's whole knob space).
        cases: benchmark case ids to time at (default: every bench case of each op; on the
            emulator one small shape per op).
        dtype: the dtype timed.
        check_dtypes: dtypes of the correctness checks (default: every dtype of the op).
        runner: ``"cuda"``, ``"metal"`` or ``"emulator"``.
        evaluator: runs the candidates.
        seed: seeds the inputs (each record gets fresh ones).
        on_record: called with each record.
        timing: ``warmup``, ``repeats``, ``batch``.

    Returns:
        The manifest.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emulated = runner == "emulator"
    manifest: dict[str, Any] = {
        "schema": "zmlx.foundry.run",
        "version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runner": runner,
        "backend": "cuda" if emulated else runner,
        "device": ("cpu emulator of " if emulated else "") + device_name(),
        "ops": list(ops),
        "grid": grid,
        "timed": not emulated,
        "counts": {},
    }
    n = 0
    with open(out / RESULTS, "w") as f:
        for op in ops:
            for target in _targets(op, dtype, emulated, cases):
                checks = target.check_cases(emulated)
                dts = list(check_dtypes or [dtype_name(d) for d in target.spec.dtypes])
                for knobs in points(target, grid):
                    full = {**target.defaults, **knobs}
                    res = evaluate_candidate(target, full, None, evaluator, runner=runner,
                                             cases=checks, dtypes=dts, seed=seed * 7919 + n,
                                             **timing)  # fmt: skip
                    rec = record(target, full, res, manifest)
                    f.write(json.dumps(rec, default=float) + "\n")
                    f.flush()
                    n += 1
                    status = manifest["counts"]
                    status[rec["status"]] = status.get(rec["status"], 0) + 1
                    if on_record:
                        on_record(rec)
    manifest["records"] = n
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def record(target: Target, knobs: dict, res: dict, manifest: Mapping) -> dict[str, Any]:
    """One results line: the template point, its kernel as launched, and what happened."""
    try:
        launches = target.launches(knobs, None, target.args0)
    except Exception:  # knobs the op refuses: the record keeps the static-check reasons
        launches = []
    first = launches[0] if launches else None
    template = {k: (dtype_name(v) if not isinstance(v, (bool, int)) else v)
                for k, v in (first.template if first else [])}  # fmt: skip
    return {
        "op": target.op,
        "family": target.spec.family,
        "description": target.spec.description,
        "case": target.case,
        "shapes": [list(s) for s in target.describe()["shapes"]],
        "dtype": target.dtype,
        "shape_class": target.shape_class,
        "knobs": knobs,
        "defaults": target.defaults,
        "knob_space": {k: list(v) for k, v in target.space.values.items()},
        "knob_notes": target.space.describe,
        "kernel": first.kernel.name if first else None,
        "threadgroup": list(first.threadgroup) if first else None,
        "template": template,
        "body": first.kernel.body if first else None,
        "status": res.get("status"),
        "reasons": res.get("reasons", []),
        "error": res.get("error", ""),
        "checks": res.get("checks", []),
        "timing": res.get("timing", {}),
        "runner": manifest["runner"],
        "backend": manifest["backend"],
        "device": manifest["device"],
    }


def read(run_dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Every record of the given run folders."""
    recs = []
    for d in run_dirs:
        p = Path(d) / RESULTS
        if not p.is_file():
            raise ValueError(
                f"[foundry] {d}: no {RESULTS} (run `python -m zmlx.foundry run` first)"
            )
        recs += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return recs
