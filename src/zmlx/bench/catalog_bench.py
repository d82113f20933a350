"""Every catalog op timed against its stock-MLX counterpart, in one process.

For each op and each of its ``bench_cases``: inputs from the spec's ``make_inputs``, one call
to see which path runs (a kernel launch, or the plain-MLX reference on the CPU and for shapes a
kernel does not cover), then :func:`zmlx.bench.compare` of ``stock`` (the spec's stock-MLX
way, defaulting to its reference) and the op, interleaved, median of repeats. Bandwidth is the
bytes of all array inputs and outputs over the median time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from ..core.backend import backend
from ..core.kernel import launch_count
from ..kernels import routes
from .timing import compare

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
CPU_NOTE = (
    "CPU backend: every op runs its plain-MLX reference path, so these rows time the reference "
    "against stock MLX, not a kernel"
)


def _arrays(x: Any) -> list[mx.array]:
    if isinstance(x, mx.array):
        return [x]
    if isinstance(x, (list, tuple)):
        return [a for item in x for a in _arrays(item)]
    if isinstance(x, dict):
        return [a for item in x.values() for a in _arrays(item)]
    return []


def nbytes(*trees: Any) -> int:
    """Bytes of every array in ``trees`` (nested tuples, lists and dicts)."""
    return sum(a.nbytes for t in trees for a in _arrays(t))


def line(row: dict[str, Any]) -> str:
    """One readable line for a row (or an error) of :func:`run`."""
    if "error" in row:
        return f"{row['op']} {row['case']}: ERROR {row['error']}"
    t = row["timings"]
    return (
        f"{row['op']} {row['case']} {row['dtype']}: stock {t['stock']['median_us']:.1f} us, "
        f"zmlx {t['zmlx']['median_us']:.1f} us ({row['speedup']:.2f}x, {row['path']})"
    )


def _dtype_name(d: mx.Dtype) -> str:
    return str(d).split(".")[-1]


def select(specs: Iterable[Any], family: str | None = None, ops: Sequence[str] = ()) -> list:
    """Specs of ``family`` (all when None) named in ``ops`` (all when empty)."""
    out = [s for s in specs if family is None or s.family == family]
    if ops:
        known = {s.name for s in out}
        unknown = [o for o in ops if o not in known]
        if unknown:
            raise ValueError(f"[bench catalog] no op(s) {unknown} (family {family or 'any'})")
        out = [s for s in out if s.name in ops]
    return out


def bench_case(
    spec: Any,
    case: dict[str, Any],
    dtype: mx.Dtype,
    *,
    seed: int = 0,
    warmup: int = 3,
    repeats: int = 10,
    batch: int = 10,
) -> dict[str, Any]:
    """Time one op on one benchmark case against stock; returns a ``catalog_bench`` row."""
    if dtype not in spec.dtypes:
        dtype = spec.dtypes[0]
    mx.random.seed(seed)
    args = spec.make_inputs(case, dtype, np.random.default_rng(seed))
    mx.eval(_arrays(args))
    before = launch_count()
    out = spec.op(*args)
    mx.eval(_arrays(out))
    path = "kernel" if launch_count() > before else "reference"
    stock = spec.stock or spec.ref
    timings = compare(
        {"stock": stock, "zmlx": spec.op},
        args,
        baseline="stock",
        warmup=warmup,
        repeats=repeats,
        batch=batch,
    )
    moved = nbytes(args, out)
    for t in timings.values():
        t["gbps"] = moved / (t["median_us"] * 1e-6) / 1e9 if t["median_us"] > 0 else None
    return {
        "op": spec.name,
        "family": spec.family,
        "case": str(case["id"]),
        "dtype": _dtype_name(dtype),
        "path": path,
        "bytes": moved,
        "elements": first.size if (first := routes.first_array(args)) is not None else 0,
        "timings": timings,
        "speedup": timings["zmlx"]["speedup"],
    }


def run(
    specs: Sequence[Any],
    *,
    dtype: str = "float16",
    cases: Sequence[str] = (),
    warmup: int = 3,
    repeats: int = 10,
    batch: int = 10,
    progress: bool | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    on_partial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Benchmark ``specs``; returns the ``results`` of a ``catalog_bench`` capsule.

    Args:
        specs: catalog specs (:func:`zmlx.kernels.catalog.specs`).
        dtype: the dtype to time (an op that lacks it uses its first dtype).
        cases: benchmark case ids to keep (all when empty).
        warmup, repeats, batch: as in :func:`zmlx.bench.compare`.
        progress: a tqdm bar (default: when stderr is a terminal).
        on_row: called with each row (and each error) as soon as it is measured.
        on_partial: called after each case with the results so far (``"partial": True``), so
            a sweep cut short still leaves a capsule.

    Returns:
        ``{"backend", "path", "dtype", "rows", "errors", "note"?}``; an op that raises is listed
        in ``errors`` and the others still run.
    """
    if dtype not in DTYPES:
        raise ValueError(f"[bench catalog] expected dtype in {list(DTYPES)}, got {dtype!r}")
    work = [(s, c) for s in specs for c in s.bench_cases if not cases or str(c["id"]) in cases]
    try:
        from tqdm.auto import tqdm

        disable = None if progress is None else not progress  # None: only on a terminal
        bar = tqdm(work, desc="catalog", unit="case", disable=disable)
    except ImportError:  # tqdm comes with the lm and dev extras; without it, no bar
        bar = work
    rows, errors = [], []
    for spec, case in bar:
        try:
            row = bench_case(spec, case, DTYPES[dtype], warmup=warmup, repeats=repeats, batch=batch)
            rows.append(row)
        except Exception as e:  # one broken op must not stop the sweep; it is reported
            row = {"op": spec.name, "case": str(case["id"]), "error": f"{type(e).__name__}: {e}"}
            errors.append(row)
        if on_row is not None:
            on_row(row)
        if on_partial is not None:
            on_partial(dict(_results(rows, errors, dtype), partial=True))
    return _results(rows, errors, dtype)


def _results(rows: list, errors: list, dtype: str) -> dict[str, Any]:
    b = backend()
    paths = {r["path"] for r in rows}
    res: dict[str, Any] = {
        "backend": b,
        "path": paths.pop() if len(paths) == 1 else ("mixed" if paths else "none"),
        "dtype": dtype,
        "rows": rows,
        "errors": errors,
    }
    if b == "cpu":
        res["note"] = CPU_NOTE
    return res
