"""Catalog entries of the scans family."""

from __future__ import annotations

import mlx.core as mx

from ._rowkit import ROW_BENCH, ROW_CASES, row_input
from .catalog import KernelSpec, register
from .scans import cumprod, cumprod_ref, cumsum, cumsum_ref, logcumsumexp, logcumsumexp_ref

# The shared row cases, two of them scanning in reverse.
_REVERSED = ("2x4097", "5x33")
CASES = tuple(dict(c, reverse=True) if c["id"] in _REVERSED else c for c in ROW_CASES)
BENCH = ROW_BENCH + ({"id": "long", "shape": (8, 65536)},)

# Running sums of 4097 terms carry float32 rounding that grows with the row (and a sum can
# cross zero, where only atol helps); the values are O(10), so these stay tight.
_TOL = {mx.float32: (2e-4, 1e-4), mx.float16: (2e-2, 4e-3), mx.bfloat16: (1.2e-1, 1.6e-2)}


def _make(kind):
    def make_inputs(case, dtype, rng):
        shape = case["shape"]
        values = None
        if kind == "cumprod":
            # Near 1 with random signs: products of 4097 terms stay finite and non-zero.
            values = rng.uniform(0.95, 1.05, size=shape) * rng.choice([-1.0, 1.0], size=shape)
        x = row_input(case, dtype, rng, scale=1.0, values=values)
        return x, case.get("reverse", False)

    return make_inputs


_SPECS = [
    ("cumsum", cumsum, cumsum_ref, lambda x, r: mx.cumsum(x, axis=-1, reverse=r),
     "inclusive cumulative sum, reverse option, block-wide warp-shuffle scan"),
    ("cumprod", cumprod, cumprod_ref, lambda x, r: mx.cumprod(x, axis=-1, reverse=r),
     "inclusive cumulative product, reverse option"),
    ("logcumsumexp", logcumsumexp, logcumsumexp_ref,
     lambda x, r: mx.logcumsumexp(x, axis=-1, reverse=r),
     "inclusive log(cumsum(exp(x))), stable, reverse option"),
]  # fmt: skip

for _name, _op, _ref, _stock, _desc in _SPECS:
    register(
        KernelSpec(
            name=_name,
            family="scans",
            op=_op,
            ref=_ref,
            make_inputs=_make(_name),
            cases=CASES,
            bench_cases=BENCH,
            stock=_stock,
            tolerances=_TOL,
            grad_argnums=(0,),
            description=_desc,
        )
    )
