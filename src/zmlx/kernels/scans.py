"""Inclusive scans over the last axis: cumsum, cumprod, logcumsumexp (each with ``reverse``).

One group scans one row, in chunks of ``4 * group`` elements: each thread scans its 4
consecutive elements in registers, a warp scan over the thread totals (``zx_shfl`` from
``lane - offset``) and a scan of the warp totals in shared memory give each thread its
prefix, and a carry moves the running total to the next chunk. Math is float32; outputs take
the input's dtype. ``reverse=True`` scans from the end of the row (the same kernel, reading
and writing columns ``D - 1 - j``).
"""

from __future__ import annotations

import mlx.core as mx

from ..core.backend import backend
from ._common import vector
from ._rowkit import RowKernel, check_input, rows_of, strided

HEADER = r"""
ZX_INLINE float zx_logaddexp(float a, float b) {
  const float m = a > b ? a : b;   // a NaN a gives m = b and then a NaN result
  if (m == ZX_NEG_INF) { return ZX_NEG_INF; }
  if (a == b) { return a + 0.6931471805599453f; }  // also inf + inf = inf, not NaN
  return m + zx_log1p(zx_exp(-zx_abs(a - b)));
}
ZX_INLINE float zx_scan_add(float a, float b) { return a + b; }
ZX_INLINE float zx_scan_mul(float a, float b) { return a * b; }
"""

# name -> (combine function, identity)
_OPS = {
    "cumsum": ("zx_scan_add", "0.0f"),
    "cumprod": ("zx_scan_mul", "1.0f"),
    "logcumsumexp": ("zx_logaddexp", "ZX_NEG_INF"),
}

_BODY = """  const float I = IDENT;
  const bool rev = p[0] > 0.5f;
  const uint nw = (lsize + 31u) / 32u;
  const long o_b = (long)row * (long)D;
  float carry = I;
  for (uint c0 = 0; c0 < D; c0 += 4u * lsize) {
    float a[4];
    for (uint k = 0; k < 4u; ++k) {
      const uint j = c0 + 4u * lid + k;
      const uint pj = rev ? D - 1u - j : j;
      a[k] = j < D ? static_cast<float>(x[x_b + (long)pj * x_s]) : I;
    }
    for (uint k = 1; k < 4u; ++k) { a[k] = COMBINE(a[k - 1], a[k]); }
    // Inclusive warp scan of the thread totals; every lane takes part in every shuffle.
    float w = a[3];
    for (int off = 1; off < 32; off <<= 1) {
      const float u = zx_shfl(w, (int)lane >= off ? (int)lane - off : (int)lane);
      if ((int)lane >= off) { w = COMBINE(u, w); }
    }
    float ex = zx_shfl(w, lane > 0u ? (int)lane - 1 : 0);
    if (lane == 0u) { ex = I; }
    if (lane == 31u) { zx_buf[warp] = w; }
    zx_barrier();
    if (warp == 0u) {
      float s = lane < nw ? zx_buf[lane] : I;
      for (int off = 1; off < 32; off <<= 1) {
        const float u = zx_shfl(s, (int)lane >= off ? (int)lane - off : (int)lane);
        if ((int)lane >= off) { s = COMBINE(u, s); }
      }
      zx_buf[lane] = s;
    }
    zx_barrier();
    float pre = warp > 0u ? COMBINE(carry, zx_buf[warp - 1u]) : carry;
    pre = COMBINE(pre, ex);
    for (uint k = 0; k < 4u; ++k) {
      const uint j = c0 + 4u * lid + k;
      if (j < D) { out[o_b + (rev ? D - 1u - j : j)] = static_cast<O>(COMBINE(pre, a[k])); }
    }
    carry = COMBINE(carry, zx_buf[nw - 1u]);
    zx_barrier();  // zx_buf is written again by the next chunk
  }
"""


def _kernel(name: str) -> RowKernel:
    combine, ident = _OPS[name]
    body = strided("x") + _BODY.replace("COMBINE(", combine + "(").replace("IDENT", ident)
    return RowKernel(f"scan_{name}", ("x", "p"), ("out",), body, header=HEADER, modes=("block",))


_KERNELS = {name: _kernel(name) for name in _OPS}

# ---------------------------------------------------------------------------------------
# References (float32 math, output in the input dtype)


def cumsum_ref(x: mx.array, reverse: bool = False) -> mx.array:
    """Shapes: x ``(..., D)`` -> ``(..., D)``."""
    return mx.cumsum(x.astype(mx.float32), axis=-1, reverse=reverse).astype(x.dtype)


def cumprod_ref(x: mx.array, reverse: bool = False) -> mx.array:
    """Shapes: x ``(..., D)`` -> ``(..., D)``."""
    return mx.cumprod(x.astype(mx.float32), axis=-1, reverse=reverse).astype(x.dtype)


def logcumsumexp_ref(x: mx.array, reverse: bool = False) -> mx.array:
    """Shapes: x ``(..., D)`` -> ``(..., D)``."""
    return mx.logcumsumexp(x.astype(mx.float32), axis=-1, reverse=reverse).astype(x.dtype)


_REFS = {"cumsum": cumsum_ref, "cumprod": cumprod_ref, "logcumsumexp": logcumsumexp_ref}


def _launch(name: str, x: mx.array, reverse: bool, b: str) -> mx.array:
    (out,) = _KERNELS[name](
        x,
        vector((1.0 if reverse else 0.0,), mx.float32),
        rows=rows_of(x),
        d=x.shape[-1],
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
        template=[("O", x.dtype)],
        backend_name=b,
    )
    return out


def _scan_function(name: str, reverse: bool):
    ref = _REFS[name]

    @mx.custom_function
    def fn(x):
        b = backend()
        return ref(x, reverse) if b == "cpu" else _launch(name, x, reverse, b)

    @fn.vjp
    def fn_vjp(primal, cotangent, output):
        if name == "cumsum":
            # d cumsum / dx is a cumsum of the cotangent in the other direction.
            b = backend()
            g = cotangent.astype(primal.dtype)
            return cumsum_ref(g, not reverse) if b == "cpu" else _launch(name, g, not reverse, b)
        _, (dx,) = mx.vjp(lambda a: ref(a, reverse), [primal], [cotangent])
        return dx

    return fn


_FNS = {(name, rev): _scan_function(name, rev) for name in _OPS for rev in (False, True)}


def _scan(name: str, x: mx.array, reverse: bool) -> mx.array:
    check_input(name, x)
    if not isinstance(reverse, bool):
        raise TypeError(f"[{name}] expected reverse to be a bool, got {type(reverse).__name__}")
    if x.size == 0:
        return mx.zeros(x.shape, x.dtype)
    return _FNS[(name, reverse)](x)


def cumsum(x: mx.array, reverse: bool = False) -> mx.array:
    """Inclusive cumulative sum over the last axis (float32 accumulation); differentiable.

    Shapes:
        x: ``(..., D)`` -> ``(..., D)``.
    """
    return _scan("cumsum", x, reverse)


def cumprod(x: mx.array, reverse: bool = False) -> mx.array:
    """Inclusive cumulative product over the last axis; differentiable (via the reference).

    Shapes:
        x: ``(..., D)`` -> ``(..., D)``.
    """
    return _scan("cumprod", x, reverse)


def logcumsumexp(x: mx.array, reverse: bool = False) -> mx.array:
    """Inclusive ``log(cumsum(exp(x)))`` over the last axis, stable (pairwise logaddexp).

    Shapes:
        x: ``(..., D)`` -> ``(..., D)``.
    """
    return _scan("logcumsumexp", x, reverse)


# Registers the catalog entries (kept apart to keep this file short).
from . import scans_specs as _specs  # noqa: E402,F401
