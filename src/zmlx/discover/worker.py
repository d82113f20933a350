"""Evaluate candidates: correctness on several shapes and dtypes, then timing (GPU only).

:func:`evaluate` does the work for one request; ``python -m zmlx.discover.worker`` serves
requests as JSON lines on stdin and answers on stdout, so that :class:`~.evaluator.Evaluator`
can hold compilation and runs to time limits by killing the process (a kernel that never
ends cannot be stopped any other way). A request::

    {"op": "rms_norm", "case": "decode-2048", "dtype": "float16", "knobs": {...},
     "body": null, "checks": [{"id": ...}, ...], "dtypes": ["float32", ...], "seed": 7,
     "runner": "cuda" | "metal" | "emulator", "timing": true, "warmup": 3, "repeats": 10,
     "batch": 10}

Answers: ``{"phase": "compiled"}`` once the first check ran (its kernels are built), then
``{"phase": "done", "result": {...}}``. On the CPU the kernels run on the SIMT emulator
(:mod:`zmlx.core.emulate`): correctness only, timing is skipped and the result says so; where
NVRTC and MLX's CUDA headers are found (``ZMLX_MLX_CUDA_INCLUDE``, see :mod:`zmlx.core.syntax`)
the CUDA rendering is also compiled as MLX would compile it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from ..core import emulate, syntax
from ..core.kernel import launch_count
from ..testing import assert_close
from .target import DTYPES, Target, applied

TIMING_SKIPPED = "timing needs a GPU (cuda or metal): the CPU emulator proves correctness only"


def _as_list(x) -> list:
    return list(x) if isinstance(x, (tuple, list)) else [x]


def _check(target: Target, got, want, dtype) -> tuple[bool, str, float]:
    """Compare outputs with the reference; returns (ok, message, max abs error)."""
    atol, rtol = target.spec.tolerance(DTYPES[dtype])
    worst = 0.0
    try:
        got, want = _as_list(got), _as_list(want)
        if len(got) != len(want):
            return False, f"{len(got)} outputs, expected {len(want)}", float("nan")
        for i, (g, w) in enumerate(zip(got, want)):
            exact = not mx.issubdtype(w.dtype, mx.floating)
            diff = mx.abs(g.astype(mx.float32) - w.astype(mx.float32))
            worst = max(worst, float(mx.max(diff).item()) if diff.size else 0.0)
            assert_close(g, w, atol=0 if exact else atol, rtol=0 if exact else rtol,
                         name=f"{target.op}[{i}]")  # fmt: skip
    except AssertionError as e:
        return False, str(e)[:600], worst
    return True, "", worst


def _timing(target: Target, req: dict, variant: Callable) -> dict[str, Any]:
    from ..bench.timing import compare

    args = target.args(int(req.get("seed", 0)) + 99_991, on_cpu=False)
    mx.eval([a for a in args if isinstance(a, mx.array)])
    stock = target.spec.stock or target.spec.ref
    res = compare(
        {"current": target.spec.op, "variant": variant, "stock": stock},
        args,
        baseline="current",
        warmup=int(req.get("warmup", 3)),
        repeats=int(req.get("repeats", 10)),
        batch=int(req.get("batch", 10)),
    )
    v, s = res["variant"], res["stock"]
    return {
        "case": target.case,
        "dtype": target.dtype,
        "timings": res,
        "speedup": v["eval_speedup"],  # device time of the current kernel / the candidate's
        "speedup_total": v["speedup"],
        "vs_stock": s["median_eval_us"] / v["median_eval_us"] if v["median_eval_us"] else None,
    }


_TARGETS: dict[tuple, Target] = {}


def evaluate(req: dict[str, Any], send: Callable[[dict], None]) -> dict[str, Any]:
    """Run one request (see the module docstring); returns (and sends) the result."""
    key = (req["op"], req.get("case"), req.get("dtype", "float16"))
    target = _TARGETS.get(key) or _TARGETS.setdefault(key, Target(*key))
    knobs = {**target.defaults, **req.get("knobs", {})}
    body = req.get("body")
    kernel = target.kernel_for(knobs) if body is not None else None
    runner = req.get("runner", "emulator")
    seed = int(req.get("seed", 0))
    emulated = runner == "emulator"
    context = emulate.emulate if emulated else contextlib.nullcontext
    cases = req.get("checks") or target.check_cases(emulated)
    dtypes = req.get("dtypes") or [n for n, d in DTYPES.items() if d in target.spec.dtypes]
    result: dict[str, Any] = {}
    if emulated and syntax.cuda_available():
        # The emulator compiles a host rendering; NVRTC also checks the CUDA one, as MLX builds it.
        fails = syntax.check_all(target.launches(knobs, body, target.args0, kernel))
        result["nvrtc"] = "ok" if not fails else fails[0][:2000]
        if fails:
            result.update(status="error", error="NVRTC rejected the CUDA rendering", checks=[])
            send({"phase": "done", "result": result})
            return result
    checks = []
    for i, (case, dtype) in enumerate((c, d) for c in cases for d in dtypes):
        args = target.args(seed * 1_000_003 + i, case, dtype, on_cpu=emulated)  # fresh each time
        before = launch_count()
        with context(), applied(target.op, knobs, kernel, body):
            got = target.spec.op(*args)
            mx.eval(got)
        launched = launch_count() - before
        ok, message, err = _check(target, got, target.spec.ref(*args), dtype)
        checks.append({"case": str(case["id"]), "dtype": dtype, "ok": ok,
                       "path": "kernel" if launched else "reference", "max_abs_err": err,
                       **({"message": message} if message else {})})  # fmt: skip
        if i == 0:
            send({"phase": "compiled"})
    passed = all(c["ok"] for c in checks)
    result.update(status="ok" if passed else "incorrect", checks=checks)
    if not passed:
        result["timing"] = {"skipped": "failed a correctness check"}
    elif emulated or not req.get("timing", True):
        result["timing"] = {"skipped": TIMING_SKIPPED if emulated else "timing not requested"}
    else:

        def variant(*a):
            with applied(target.op, knobs, kernel, body):
                return target.spec.op(*a)

        result["timing"] = _timing(target, req, variant)
    send({"phase": "done", "result": result})
    return result


def serve(stdin=None, out=None) -> None:
    """Answer requests, one JSON line each, until stdin closes."""
    stdin = stdin or sys.stdin

    def send(msg: dict) -> None:
        out.write(json.dumps(msg, default=float) + "\n")
        out.flush()

    for line in stdin:
        if not line.strip():
            continue
        try:
            evaluate(json.loads(line), send)
        except Exception as e:  # a broken candidate is a result, not the end of the worker
            tb = traceback.format_exc(limit=4)
            send({"phase": "done", "result": {"status": "error",
                  "error": f"{type(e).__name__}: {e}"[:2000], "traceback": tb[-3000:]}})  # fmt: skip


def main() -> None:
    # The protocol owns the real stdout; anything a kernel or library prints goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin, out)


if __name__ == "__main__":
    main()
