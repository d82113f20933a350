"""Timing helpers: warm-up, repeats, medians and spreads, baseline measured in the same process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import mlx.core as mx


@dataclass
class Timing:
    """Per-call times of one function, in microseconds."""

    name: str
    runs_us: list[float] = field(default_factory=list)
    batch: int = 1
    build_us: list[float] = field(default_factory=list)
    eval_us: list[float] = field(default_factory=list)

    @property
    def median_us(self) -> float:
        return statistics.median(self.runs_us)

    @property
    def spread_us(self) -> tuple[float, float]:
        """(min, max) of the runs."""
        return min(self.runs_us), max(self.runs_us)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["median_us"] = self.median_us
        d["min_us"], d["max_us"] = self.spread_us
        if self.eval_us:
            d["median_build_us"] = statistics.median(self.build_us)
            d["median_eval_us"] = statistics.median(self.eval_us)
        return d


def _eval(out) -> None:
    mx.eval(out)


def measure(
    fn: Callable[..., object],
    args: Sequence[object] = (),
    *,
    name: str = "",
    warmup: int = 3,
    repeats: int = 10,
    batch: int = 20,
) -> Timing:
    """Time ``fn(*args)``.

    Each run builds ``batch`` independent calls (graph building: Python and MLX's C++ front
    end) and then evaluates them together, so the device runs them back to back. Kept per
    call: ``runs_us`` (build + evaluation), ``build_us`` and ``eval_us`` (evaluation alone:
    the device time plus MLX's per-kernel encoding; for kernel comparisons this is the number
    that Python overhead does not blur). ``repeats`` runs are kept.
    """
    for _ in range(warmup):
        _eval([fn(*args) for _ in range(batch)])
    mx.synchronize()
    timing = Timing(name=name or getattr(fn, "__name__", "fn"), batch=batch)
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = [fn(*args) for _ in range(batch)]
        t1 = time.perf_counter()
        _eval(outs)
        mx.synchronize()
        t2 = time.perf_counter()
        timing.runs_us.append((t2 - t0) * 1e6 / batch)
        timing.build_us.append((t1 - t0) * 1e6 / batch)
        timing.eval_us.append((t2 - t1) * 1e6 / batch)
    return timing


def compare(
    fns: Mapping[str, Callable[..., object]],
    args: Sequence[object] = (),
    *,
    baseline: str | None = None,
    warmup: int = 3,
    repeats: int = 10,
    batch: int = 20,
) -> dict[str, dict]:
    """Time several implementations of the same thing in one process, interleaved.

    Runs alternate between implementations (A B C A B C ...) so drift in clocks or temperature
    hits all of them alike.

    Args:
        fns: name -> function of ``args``.
        args: the inputs, shared by all.
        baseline: the name the others are compared to (default: the first).
        warmup, repeats, batch: as in :func:`measure`.

    Returns:
        name -> timing dict with ``median_us``, ``min_us``, ``max_us``, ``runs_us`` and
        ``speedup`` (baseline median / this median).
    """
    names = list(fns)
    baseline = baseline or names[0]
    if baseline not in fns:
        raise ValueError(f"[compare] baseline {baseline!r} is not one of {names}")
    for n in names:
        for _ in range(warmup):
            _eval([fns[n](*args) for _ in range(batch)])
    mx.synchronize()
    timings = {n: Timing(name=n, batch=batch) for n in names}
    for _ in range(repeats):
        for n in names:
            t = measure(fns[n], args, name=n, warmup=0, repeats=1, batch=batch)
            timings[n].runs_us.extend(t.runs_us)
            timings[n].build_us.extend(t.build_us)
            timings[n].eval_us.extend(t.eval_us)
    base = timings[baseline].median_us
    out = {}
    for n in names:
        d = timings[n].to_dict()
        d["speedup"] = base / d["median_us"] if d["median_us"] > 0 else float("nan")
        base_eval = statistics.median(timings[baseline].eval_us)
        d["eval_speedup"] = (
            base_eval / d["median_eval_us"] if d["median_eval_us"] > 0 else float("nan")
        )
        out[n] = d
    return out
