"""Catalog entries of the reductions family."""

from __future__ import annotations

import mlx.core as mx

from . import reductions as R  # its sum/max/min are MLX's names, not the builtins
from ._rowkit import ROW_BENCH, ROW_CASES, row_input
from .catalog import register_table

CASES = ROW_CASES
BENCH = ROW_BENCH + ({"id": "router", "shape": (1024, 128)}, {"id": "vocab", "shape": (8, 151936)})


def _x(case, dtype, rng):
    return row_input(case, dtype, rng)


def _x_ties(case, dtype, rng):
    """Values on a coarse grid, so rows hold ties for the index rules to decide."""
    return row_input(case, dtype, rng, values=rng.integers(-8, 8, size=case["shape"]) / 4)


def _std1(x):
    return R.std(x, -1, False, 1)


def _std1_ref(x):
    return R.std_ref(x, -1, False, 1)


def _topk_inputs(case, dtype, rng):
    x = _x_ties(case, dtype, rng)
    k = case.get("k", 8)
    return x, k if k < x.shape[-1] else x.shape[-1]


def _topk_stock(x, k):
    return mx.topk(x, k, axis=-1)


_SPECS = [
    ("sum", R.sum, R.sum_ref, _x, lambda x: mx.sum(x, axis=-1), (0,), "row sum, float32 accumulation"),
    ("mean", R.mean, R.mean_ref, _x, lambda x: mx.mean(x, axis=-1), (0,), "row mean"),
    ("max", R.max, R.max_ref, _x, lambda x: mx.max(x, axis=-1), (0,), "row max"),
    ("min", R.min, R.min_ref, _x, lambda x: mx.min(x, axis=-1), (0,), "row min"),
    ("var", R.var, R.var_ref, _x, lambda x: mx.var(x, axis=-1), (0,), "row variance, two passes"),
    ("std", _std1, _std1_ref, _x, lambda x: mx.std(x, axis=-1, ddof=1), (0,),
     "row standard deviation (here ddof=1)"),
    ("argmax", R.argmax, R.argmax_ref, _x_ties, lambda x: mx.argmax(x, axis=-1), (),
     "index of the row max (first NaN, then lowest index on ties)"),
    ("argmin", R.argmin, R.argmin_ref, _x_ties, lambda x: mx.argmin(x, axis=-1), (),
     "index of the row min (first NaN, then lowest index on ties)"),
    ("topk", R.topk, R.topk_ref, _topk_inputs, _topk_stock, (),
     "k <= 32 largest per row, sorted, with uint32 indices (ties: lowest index first)"),
]  # fmt: skip

# Single-array makers return the array; the catalog wants the argument tuple.
_ROWS = [
    (
        n,
        op,
        ref,
        (lambda m: lambda c, d, r: (m(c, d, r),))(mk) if mk in (_x, _x_ties) else mk,
        st,
        g,
        ds,
    )
    for n, op, ref, mk, st, g, ds in _SPECS
]
register_table(
    "reductions",
    _ROWS,
    ("name", "op", "ref", "make_inputs", "stock", "grad_argnums", "description"),
    cases=CASES,
    bench_cases=BENCH,
)
