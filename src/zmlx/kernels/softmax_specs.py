"""Catalog entries of the softmax family."""

from __future__ import annotations

import mlx.core as mx

from ._rowkit import ROW_BENCH, ROW_CASES, row_input
from .catalog import register_table
from .softmax import (
    NEG_INF,
    log_softmax,
    log_softmax_ref,
    logsumexp,
    logsumexp_ref,
    masked_softmax,
    masked_softmax_ref,
    scaled_softmax,
    scaled_softmax_ref,
    softmax,
    softmax_ref,
)

CASES = ROW_CASES
BENCH = ROW_BENCH + (
    {"id": "router", "shape": (1024, 64)},
    {"id": "attn_scores", "shape": (32, 1024, 1024)},
)
_x = row_input


def _float_mask(x, rng):
    d = x.shape[-1]
    keep = rng.uniform(size=(d,)) > 0.25
    keep[0] = True  # no fully masked rows from a broadcast mask
    vals = rng.normal(size=(d,)).astype("float32") * 0.5
    return mx.array(vals).astype(x.dtype) + mx.where(mx.array(keep), 0.0, NEG_INF).astype(x.dtype)


def _bool_mask(x, rng):
    keep = rng.uniform(size=x.shape) > 0.3
    if x.ndim > 1 and x.shape[0] > 1:
        keep[1] = False  # one fully masked row: zeros, not NaN
    return mx.array(keep)


_SPECS = [
    ("softmax", softmax, softmax_ref, lambda c, d, r: (_x(c, d, r),),
     lambda x: mx.softmax(x, axis=-1, precise=True), "softmax over the last axis, online max/sum"),
    ("log_softmax", log_softmax, log_softmax_ref, lambda c, d, r: (_x(c, d, r),),
     lambda x: x - mx.logsumexp(x, axis=-1, keepdims=True), "x - logsumexp(x)"),
    ("scaled_softmax", scaled_softmax, scaled_softmax_ref, lambda c, d, r: (_x(c, d, r), 0.125),
     lambda x, s: mx.softmax(x * s, axis=-1, precise=True), "softmax(scale * x), runtime scale"),
    ("masked_softmax", masked_softmax, masked_softmax_ref,
     lambda c, d, r: (lambda x: (x, _float_mask(x, r)))(_x(c, d, r)),
     lambda x, m: mx.softmax(x + m, axis=-1, precise=True),
     "softmax(x + mask), additive mask broadcast over rows; all-masked rows give zeros"),
    ("masked_softmax_bool", masked_softmax, masked_softmax_ref,
     lambda c, d, r: (lambda x: (x, _bool_mask(x, r)))(_x(c, d, r)),
     lambda x, m: mx.softmax(mx.where(m, x, NEG_INF), axis=-1, precise=True),
     "softmax with a boolean keep-mask; all-masked rows give zeros"),
    ("logsumexp", logsumexp, logsumexp_ref, lambda c, d, r: (_x(c, d, r),),
     lambda x: mx.logsumexp(x, axis=-1), "log(sum(exp(x))) over the last axis, one pass"),
]  # fmt: skip

register_table("softmax", _SPECS, ("name", "op", "ref", "make_inputs", "stock", "description"),
               cases=CASES, bench_cases=BENCH, grad_argnums=(0,))  # fmt: skip
