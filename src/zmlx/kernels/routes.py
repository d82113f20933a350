"""Stock routes: where a catalog op is slower than stock MLX, it calls stock MLX instead.

A kernel that wins at one shape can lose at another (a launch-bound decode shape, or a size
where MLX's own kernel is tuned better). The catalog benchmark (``python -m zmlx.bench
catalog``) times every op against its stock-MLX counterpart (``KernelSpec.stock``) at decode-
and prefill-like cases; ``python -m zmlx.bench routes CAPSULE --write`` turns the cases where
zmlx was slower into *routes*: ``(op, backend, dtype, element range) -> stock``, each with its
evidence. The op's public function then checks its routes on every call and hands the call to
stock MLX inside a routed range; outside every range the kernel runs.

* Routes are off unless ``ZMLX_STOCK_ROUTES`` names a table: ``shipped`` (the measured
  ``zmlx/kernels/overrides/stock_routes.json``) or a file path (``off``: none). Off by
  default because a stock counterpart does not always keep the op's contract: run on an
  H100, routed calls of the shipped table raised (``rms_norm`` without its ``eps``), returned
  another dtype (``z_loss``), summed half-precision inputs in half precision (indexing sums)
  or differed in masked rows and gradients (masked softmax, top-k)
  (``benchmarks/capsules/gpu_tests_vec16_h100.json``).
* A call's size is the element count of its first array argument and its dtype that array's;
  a measured case's range reaches halfway (geometrically) to its measured neighbours, so the
  ranges of one ``(op, backend, dtype)`` tile the sizes the benchmark covered and beyond.
* Only ops with a route are wrapped (:func:`install`, when the catalog registers the op), so
  an empty table costs nothing. ``KernelSpec.op`` stays the kernel itself, which the catalog's
  tests check against the reference.
* A routed call still gets the op's own argument errors: the op runs once per call shape
  without launching anything (:func:`zmlx.core.kernel.dry_run`) before stock MLX runs it.
* The benchmark times eager calls, whose Python overhead a compiled decode step does not pay
  again. So routes apply to calls a user makes; inside :func:`bypass` (every module
  ``zmlx.patch`` swaps in, and the compiled decoder's attention) the kernel always runs: those
  paths stand on their own end-to-end measurements (``benchmarks/moe_decode.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlx.core as mx

from ..core.backend import backend as current_backend
from ..core.kernel import dry_run

SCHEMA = "zmlx.stock_routes"
DEFAULT_TABLE = Path(__file__).resolve().parent / "overrides" / "stock_routes.json"
MARGIN = 0.97  # a case routes to stock when zmlx runs below this fraction of stock's speed

_TABLE: dict[str, list[dict[str, Any]]] | None = None
_INSTALLED: dict[str, tuple[Any, str, Callable]] = {}  # op -> (module, name, original)
_BYPASS: contextvars.ContextVar[bool] = contextvars.ContextVar("zmlx_routes_bypass", default=False)


@contextlib.contextmanager
def bypass() -> Iterator[None]:
    """Within this block every op runs its kernel, whatever the table routes."""
    token = _BYPASS.set(True)
    try:
        yield
    finally:
        _BYPASS.reset(token)


def table_path() -> Path | None:
    """The table file in use: None unless ``ZMLX_STOCK_ROUTES`` is ``shipped`` or a path."""
    env = os.environ.get("ZMLX_STOCK_ROUTES")
    if not env or env == "off":
        return None
    return DEFAULT_TABLE if env == "shipped" else Path(env)


def read(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The routes of a table file (checked)."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"[routes] cannot read {p}: {e}") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise ValueError(f"[routes] expected a {SCHEMA!r} file, got {p}")
    entries = raw.get("routes")
    if not isinstance(entries, list):
        raise ValueError(f"[routes] expected a 'routes' list in {p}")
    for e in entries:
        missing = {"op", "backend", "dtype", "min_elements", "max_elements"} - set(e)
        if missing:
            raise ValueError(f"[routes] route {e} in {p} lacks {sorted(missing)}")
    return entries


def _table() -> dict[str, list[dict[str, Any]]]:
    global _TABLE
    if _TABLE is None:
        path = table_path()
        entries = read(path) if path is not None and path.exists() else []
        _TABLE = {}
        for e in entries:
            _TABLE.setdefault(e["op"], []).append(e)
    return _TABLE


def reload() -> None:
    """Read the table again (after ``ZMLX_STOCK_ROUTES`` or the file changed)."""
    global _TABLE
    _TABLE = None


def first_array(args: Iterable[Any]) -> mx.array | None:
    """The array a call is sized by: its first positional array argument."""
    return next((a for a in args if isinstance(a, mx.array)), None)


def routed(op: str, backend: str, args: Iterable[Any]) -> dict[str, Any] | None:
    """The route a call of ``op`` with ``args`` on ``backend`` takes, or None (the kernel)."""
    entries = _table().get(op)
    if not entries or _BYPASS.get():
        return None
    x = first_array(args)
    if x is None:
        return None
    dtype = str(x.dtype).split(".")[-1]
    for e in entries:
        if e["backend"] == backend and e["dtype"] == dtype:
            hi = e["max_elements"]
            if e["min_elements"] <= x.size and (hi is None or x.size < hi):
                return e
    return None


def install(spec: Any) -> bool:
    """Wrap ``spec``'s public function (in its module) when the table routes that op.

    Returns whether it was wrapped. The wrapper asks :func:`routed` on each call and runs
    ``spec.stock`` (or ``spec.ref``) inside a route when stock's signature takes the call, the
    kernel everywhere else.
    """
    if spec.name in _INSTALLED or not _table().get(spec.name):
        return False
    fn = spec.op
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    name = getattr(fn, "__name__", "")
    if module is None or getattr(module, name, None) is not fn:
        return False
    stock = spec.stock or spec.ref
    try:
        accepts = inspect.signature(stock).bind
    except (TypeError, ValueError):  # a compiled function (mx.fast.*): its binding says
        accepts = None

    @functools.wraps(fn)
    def routed_op(*args, **kwargs):
        b = current_backend()
        if routed(spec.name, b, args) is not None:
            _check_call(spec.name, fn, b, args, kwargs)
            if accepts is None:
                try:
                    return stock(*args, **kwargs)
                except TypeError:  # not a call stock takes
                    return fn(*args, **kwargs)
            if _binds(accepts, args, kwargs):
                return stock(*args, **kwargs)
        return fn(*args, **kwargs)

    setattr(module, name, routed_op)
    _INSTALLED[spec.name] = (module, name, fn)
    return True


_CHECKED: set = set()


def _arg_key(a: Any) -> Any:
    """What an op's argument checks can depend on: an array's shape and dtype, a plain
    value; None when neither (the call is then always checked)."""
    if isinstance(a, mx.array):
        return ("array", tuple(a.shape), str(a.dtype))
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    if isinstance(a, (tuple, list)):
        keys = tuple(_arg_key(x) for x in a)
        return None if any(k is None and x is not None for k, x in zip(keys, a)) else keys
    return None


def _check_call(op: str, fn: Callable, backend: str, args: tuple, kwargs: dict) -> None:
    """Give a call routed to stock the op's own argument errors: run the op once for this
    call's shapes, dtypes and options without launching anything (:func:`dry_run`). Stock MLX
    checks less, or fails deep inside, or not at all (a 2-d weight given to ``gather_qmv``)."""
    key = (op, _arg_key(args), _arg_key(tuple(sorted(kwargs.items()))))
    if None in key[1:]:
        key = None
    if key is not None and key in _CHECKED:
        return
    with dry_run(backend):
        fn(*args, **kwargs)
    if key is not None:
        if len(_CHECKED) > 4096:
            _CHECKED.clear()
        _CHECKED.add(key)


def _binds(accepts: Callable, args: tuple, kwargs: dict) -> bool:
    """Whether stock takes this call. Several specs can share one public function (``swiglu``
    with and without biases, ``geglu`` with an ``approximate`` option): a call shaped unlike
    the routed spec's stock runs the kernel."""
    try:
        accepts(*args, **kwargs)
    except TypeError:
        return False
    return True


def uninstall_all() -> None:
    """Put every wrapped function back (tests)."""
    for module, name, fn in _INSTALLED.values():
        setattr(module, name, fn)
    _INSTALLED.clear()


# ---------------------------------------------------------------------------------------
# From a catalog benchmark capsule to routes


def derive(
    capsule: Mapping[str, Any], evidence: str = "", margin: float = MARGIN
) -> list[dict[str, Any]]:
    """Routes from a ``catalog_bench`` capsule: the cases where zmlx ran below ``margin``
    of stock's speed, each with the element range it stands for.

    Rows need ``elements`` (the first array argument's size); rows that took the reference
    path (no kernel ran) give no route.
    """
    res = capsule["results"]
    backend = res["backend"]
    device = capsule.get("env", {}).get("device", "")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in res["rows"]:
        if r.get("path") != "kernel" or not r.get("elements"):
            continue
        groups.setdefault((r["op"], r["dtype"]), []).append(r)
    out = []
    for (op, dtype), rows in sorted(groups.items()):
        rows.sort(key=lambda r: r["elements"])
        sizes = [r["elements"] for r in rows]
        for i, r in enumerate(rows):
            if r["speedup"] >= margin:
                continue
            lo = 0 if i == 0 else math.ceil(math.sqrt(sizes[i - 1] * sizes[i]))
            hi = None if i == len(rows) - 1 else math.ceil(math.sqrt(sizes[i] * sizes[i + 1]))
            if lo == hi:
                continue
            out.append({
                "op": op, "backend": backend, "dtype": dtype, "min_elements": lo,
                "max_elements": hi, "case": r["case"], "speedup": r["speedup"],
                "device": device, "evidence": evidence,
            })  # fmt: skip
    return _merge(out)


def _merge(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join neighbouring ranges of the same ``(op, backend, dtype)``."""
    out: list[dict[str, Any]] = []
    for r in routes:
        prev = out[-1] if out else None
        same = prev and all(prev[k] == r[k] for k in ("op", "backend", "dtype"))
        if same and prev["max_elements"] == r["min_elements"]:
            prev["max_elements"] = r["max_elements"]
            prev["case"] = f"{prev['case']}+{r['case']}"
            prev["speedup"] = min(prev["speedup"], r["speedup"])
        else:
            out.append(dict(r))
    return out


def write(routes: list[dict[str, Any]], path: str | os.PathLike | None = None) -> Path:
    """Replace the routes of ``routes``' backends in the table file; returns its path."""
    p = Path(path) if path is not None else DEFAULT_TABLE
    old = read(p) if p.exists() else []
    backends = {r["backend"] for r in routes}
    keep = [r for r in old if r["backend"] not in backends]
    body = {"schema": SCHEMA, "version": 1, "routes": keep + routes}
    p.write_text(json.dumps(body, indent=2) + "\n")
    reload()
    return p
