"""Reductions over the last axis: sum, mean, max, min, var, std, argmax, argmin, top-k.

The kernel path covers the last axis. Another ``axis`` takes the reference path (stock MLX
reductions, which reduce any axis without a copy; a transpose to the last axis would copy the
array first), with a fallback note on a GPU. ``sum``/``mean``/``max``/``min`` are
:func:`zmlx.reduce` row kernels; ``var``/``std`` (two passes over the row: mean, then squared
deviations), ``argmax``/``argmin`` and ``topk`` are hand-written :class:`RowKernel` bodies.
Ties and NaN follow MLX: NaN ranks first (``argmax`` and ``argmin`` both return the first
NaN), then equal values go to the lowest index.
"""

from __future__ import annotations

import math

import mlx.core as mx

from ..authoring.rows import reduce
from ..core.backend import backend
from ..core.fallback import note
from ._common import vector
from ._rowkit import MAX_INDEX, RowKernel, check_input, rows_of, strided

TOPK_MAX = 32  # largest k on the kernel path (per-thread lists of k candidates)

# ---------------------------------------------------------------------------------------
# References (float32 math, output in the input dtype; indices uint32 as MLX's)


def _f32(fn):
    def ref(x, axis=-1, keepdims=False):
        return fn(x.astype(mx.float32), axis=axis, keepdims=keepdims).astype(x.dtype)

    return ref


sum_ref = _f32(mx.sum)
mean_ref = _f32(mx.mean)
max_ref = _f32(mx.max)
min_ref = _f32(mx.min)


def var_ref(x, axis=-1, keepdims=False, ddof=0):
    """Shapes: x ``(..., D)`` -> ``(...)``."""
    return mx.var(x.astype(mx.float32), axis=axis, keepdims=keepdims, ddof=ddof).astype(x.dtype)


def std_ref(x, axis=-1, keepdims=False, ddof=0):
    """Shapes: x ``(..., D)`` -> ``(...)``."""
    return mx.std(x.astype(mx.float32), axis=axis, keepdims=keepdims, ddof=ddof).astype(x.dtype)


def argmax_ref(x, axis=-1, keepdims=False):
    return mx.argmax(x, axis=axis, keepdims=keepdims)


def argmin_ref(x, axis=-1, keepdims=False):
    return mx.argmin(x, axis=axis, keepdims=keepdims)


def _order_keys(x):
    """uint32 keys with the order of float32 ``x``: -0.0 == 0.0, NaN above +inf."""
    x = mx.where(mx.isnan(x), math.nan, x.astype(mx.float32) + 0.0)
    b = x.view(mx.uint32)
    return mx.where((b >> 31) == 1, ~b, b | 0x80000000)


def topk_ref(x: mx.array, k: int, largest: bool = True):
    """The ``k`` largest (or smallest) entries of each row, best first, and their indices.

    Order: NaN first, then by value, equal values by lowest index (an exact sort on a
    (value, index) key, so the order does not depend on the sort's stability).

    Shapes:
        x: ``(..., D)`` -> values ``(..., k)`` (x's dtype), indices ``(..., k)`` uint32.
    """
    return _topk_sorted(x, k, 1.0 if largest else -1.0)


def _topk_sorted(x, k, sign):
    """:func:`topk_ref` with the direction as a number or a 0-d array (+1 or -1)."""
    keys = _order_keys(x.astype(mx.float32) * sign)
    idx = mx.broadcast_to(mx.arange(x.shape[-1], dtype=mx.uint32), x.shape)
    composite = (keys.astype(mx.uint64) << 32) | (0xFFFFFFFF - idx).astype(mx.uint64)
    order = mx.stop_gradient(mx.argsort(composite, axis=-1)[..., ::-1][..., :k])
    return mx.take_along_axis(x, order, axis=-1), order.astype(mx.uint32)


# ---------------------------------------------------------------------------------------
# Kernels

_ROW_OPS = {
    "sum": reduce("sum", name="row_sum"),
    "mean": reduce("sum", finalize="acc / n", name="row_mean"),
    "max": reduce("max", name="row_max"),
    "min": reduce("min", name="row_min"),
}

# p = (ddof, take sqrt): one kernel for var and std. Two passes keep the variance accurate
# when the mean is large against the spread (the second read mostly hits the cache).
_VAR = RowKernel(
    "row_var",
    ("x", "p"),
    ("out",),
    strided("x")
    + """  float s = 0.0f;
  for (uint j = r_lid; j < D; j += r_step) { s += static_cast<float>(x[x_b + j * x_s]); }
  const float mu = zx_row_sum(s, zx_buf, r_lid, r_step) / (float)D;
  float q = 0.0f;
  for (uint j = r_lid; j < D; j += r_step) {
    const float d = static_cast<float>(x[x_b + j * x_s]) - mu;
    q += d * d;
  }
  const float ss = zx_row_sum(q, zx_buf, r_lid, r_step);
  if (r_lid == 0u) {
    const float v = ss / zx_max((float)D - p[0], 0.0f);  // as MLX: n - ddof <= 0 gives inf/nan
    out[row] = static_cast<O>(p[1] > 0.5f ? zx_sqrt(v) : v);
  }
""",
)

# p = (sign,): +1 ranks the largest first (argmax, top-k), -1 the smallest.
_ARG = RowKernel(
    "row_argbest",
    ("x", "p"),
    ("out",),
    strided("x")
    + """  float bv = ZX_NEG_INF;
  float bi = 4294967295.0f;
  for (uint j = r_lid; j < D; j += r_step) {
    const float v = p[0] * static_cast<float>(x[x_b + j * x_s]);
    if (zx_ranks_before(v, (float)j, bv, bi)) { bv = v; bi = (float)j; }
  }
  const ZxArg a = zx_row_arg(zx_arg(bv, bi), zx_buf, zx_buf2, r_lid, r_step);
  if (r_lid == 0u) { out[row] = static_cast<uint>(a.i); }
""",
)

# Top-k: every thread keeps its own best K (insertion into a sorted list), then K rounds of a
# row-wide arg-best pick the winners in order; the owner of each winner pops its head.
_TOPK = RowKernel(
    "row_topk",
    ("x", "p"),
    ("vals", "idx"),
    strided("x")
    + """  float lv[K];
  float li[K];
  for (int k = 0; k < K; ++k) { lv[k] = ZX_NEG_INF; li[k] = 4294967295.0f; }
  for (uint j = r_lid; j < D; j += r_step) {
    const float v = p[0] * static_cast<float>(x[x_b + j * x_s]);
    const float fj = (float)j;
    if (zx_ranks_before(v, fj, lv[K - 1], li[K - 1])) {
      int k = K - 1;
      while (k > 0 && zx_ranks_before(v, fj, lv[k - 1], li[k - 1])) {
        lv[k] = lv[k - 1];
        li[k] = li[k - 1];
        --k;
      }
      lv[k] = v;
      li[k] = fj;
    }
  }
  int h = 0;
  const long o_b = (long)row * (long)K;
  for (int r = 0; r < K; ++r) {
    const ZxArg c = h < K ? zx_arg(lv[h], li[h]) : zx_arg(ZX_NEG_INF, 4294967295.0f);
    const ZxArg w = zx_row_arg(c, zx_buf, zx_buf2, r_lid, r_step);
    if (h < K && li[h] == w.i) { ++h; }
    if (r_lid == 0u) {
      vals[o_b + r] = static_cast<O>(p[0] * w.v);
      idx[o_b + r] = static_cast<uint>(w.i);
    }
  }
""",
)


def _last_axis(x: mx.array, axis: int) -> bool:
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"expected axis in [{-x.ndim}, {x.ndim}), got {axis}")
    return axis % x.ndim == x.ndim - 1


def _reduction(op: str, ref, x, axis: int, keepdims: bool, kernel_fn):
    check_input(op, x)
    try:
        last = _last_axis(x, axis)
    except ValueError as e:
        raise ValueError(f"[{op}] {e}") from None
    if not last or x.size == 0:
        if backend() != "cpu" and x.size:
            note(op, f"axis {axis} is not the last axis: stock MLX reduction")
        return ref(x, axis=axis, keepdims=keepdims)
    out = kernel_fn(x)
    return mx.expand_dims(out, -1) if keepdims else out


def _row_op(name):
    ref = {"sum": sum_ref, "mean": mean_ref, "max": max_ref, "min": min_ref}[name]

    def op(x: mx.array, axis: int = -1, keepdims: bool = False) -> mx.array:
        return _reduction(name, ref, x, axis, keepdims, _ROW_OPS[name])

    op.__name__ = name
    op.__doc__ = f"""Row {name} (float32 accumulation, output in ``x``'s dtype); differentiable.

    Shapes:
        x: ``(..., D)`` -> ``(...)`` (``(..., 1)`` with ``keepdims``).
    """
    return op


sum = _row_op("sum")  # MLX's names; the builtins are not used in this module
mean = _row_op("mean")
max = _row_op("max")
min = _row_op("min")


def _var_function(ddof: int, take_sqrt: bool):
    ref = std_ref if take_sqrt else var_ref

    @mx.custom_function
    def fn(x):
        b = backend()
        if b == "cpu":
            return ref(x, ddof=ddof)
        rows = rows_of(x)
        (out,) = _VAR(
            x,
            vector((float(ddof), 1.0 if take_sqrt else 0.0), mx.float32),
            rows=rows,
            d=x.shape[-1],
            output_shapes=[(rows,)],
            output_dtypes=[x.dtype],
            template=[("O", x.dtype)],
            backend_name=b,
        )
        return out.reshape(x.shape[:-1])

    @fn.vjp
    def fn_vjp(primal, cotangent, output):
        # d var / dx_j = 2 (x_j - mean) / (n - ddof); std divides by 2 std. Via the reference.
        _, (dx,) = mx.vjp(lambda a: ref(a, ddof=ddof), [primal], [cotangent])
        return dx

    return fn


_VAR_FNS: dict[tuple[int, bool], object] = {}


def _variance(op, x, axis, keepdims, ddof, take_sqrt):
    ref = std_ref if take_sqrt else var_ref
    if not isinstance(ddof, int) or isinstance(ddof, bool) or ddof < 0:
        raise ValueError(f"[{op}] expected a non-negative integer ddof, got {ddof!r}")
    key = (ddof, take_sqrt)
    fn = _VAR_FNS.get(key)
    if fn is None:
        fn = _VAR_FNS.setdefault(key, _var_function(*key))

    def reference(a, axis, keepdims):
        return ref(a, axis=axis, keepdims=keepdims, ddof=ddof)

    return _reduction(op, reference, x, axis, keepdims, fn)


def var(x: mx.array, axis: int = -1, keepdims: bool = False, ddof: int = 0) -> mx.array:
    """Variance ``sum((x - mean)^2) / (n - ddof)`` (two passes, float32); differentiable.

    Shapes:
        x: ``(..., D)`` -> ``(...)`` (``(..., 1)`` with ``keepdims``).
    """
    return _variance("var", x, axis, keepdims, ddof, False)


def std(x: mx.array, axis: int = -1, keepdims: bool = False, ddof: int = 0) -> mx.array:
    """Standard deviation, ``sqrt(var(x, ddof=ddof))``; differentiable.

    Shapes:
        x: ``(..., D)`` -> ``(...)`` (``(..., 1)`` with ``keepdims``).
    """
    return _variance("std", x, axis, keepdims, ddof, True)


def _argbest(op, ref, sign, x, axis, keepdims):
    def kernel_fn(a):
        b = backend()
        d = a.shape[-1]
        if b == "cpu" or d > MAX_INDEX:
            if b != "cpu":
                note(op, f"rows of {d} > 2^24 elements: stock MLX")
            return ref(a)
        rows = rows_of(a)
        (out,) = _ARG(
            a,
            vector((sign,), mx.float32),
            rows=rows,
            d=d,
            output_shapes=[(rows,)],
            output_dtypes=[mx.uint32],
            backend_name=b,
        )
        return out.reshape(a.shape[:-1])

    return _reduction(op, ref, x, axis, keepdims, kernel_fn)


def argmax(x: mx.array, axis: int = -1, keepdims: bool = False) -> mx.array:
    """Index of the largest entry (the first NaN if any; ties: the lowest index), uint32.

    Shapes:
        x: ``(..., D)`` -> ``(...)`` (``(..., 1)`` with ``keepdims``).
    """
    return _argbest("argmax", argmax_ref, 1.0, x, axis, keepdims)


def argmin(x: mx.array, axis: int = -1, keepdims: bool = False) -> mx.array:
    """Index of the smallest entry (the first NaN if any; ties: the lowest index), uint32.

    Shapes:
        x: ``(..., D)`` -> ``(...)`` (``(..., 1)`` with ``keepdims``).
    """
    return _argbest("argmin", argmin_ref, -1.0, x, axis, keepdims)


def _topk_function(k: int):
    @mx.custom_function
    def fn(x, params):
        b = backend()
        if b == "cpu" or k > TOPK_MAX or x.shape[-1] > MAX_INDEX:
            if b != "cpu":
                note("topk", f"k={k} > {TOPK_MAX} or rows over 2^24 elements: reference sort")
            return _topk_sorted(x, k, params[0])
        rows = rows_of(x)
        vals, idx = _TOPK(
            x,
            params,
            rows=rows,
            d=x.shape[-1],
            output_shapes=[(rows, k), (rows, k)],
            output_dtypes=[x.dtype, mx.uint32],
            template=[("K", k), ("O", x.dtype)],
            backend_name=b,
        )
        shape = x.shape[:-1] + (k,)
        return vals.reshape(shape), idx.reshape(shape)

    @fn.vjp
    def fn_vjp(primals, cotangents, outputs):
        x, params = primals
        g = cotangents[0].astype(x.dtype)
        dx = mx.put_along_axis(mx.zeros(x.shape, x.dtype), outputs[1], g, axis=-1)
        return dx, mx.zeros_like(params)

    return fn


_TOPK_FNS: dict[int, object] = {}


def topk(x: mx.array, k: int, largest: bool = True) -> tuple[mx.array, mx.array]:
    """The ``k`` largest (``largest=False``: smallest) entries of each row and their indices.

    Values come best first: NaN first, then by value, equal values by lowest index (the
    order of ``topk_ref``). ``k <= 32`` runs one kernel per row (each thread keeps its own
    best ``k``, then ``k`` row-wide rounds pick the winners); larger ``k`` sorts with stock
    MLX. The values are differentiable (the gradient scatters back to the chosen columns).

    Shapes:
        x: ``(..., D)`` -> values ``(..., k)`` (x's dtype), indices ``(..., k)`` uint32.
    """
    check_input("topk", x)
    d = x.shape[-1]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= d:
        raise ValueError(f"[topk] expected an integer k in [1, {d}], got {k!r}")
    if x.size == 0:
        return topk_ref(x, k, largest)
    fn = _TOPK_FNS.get(k)
    if fn is None:
        fn = _TOPK_FNS.setdefault(k, _topk_function(k))
    return tuple(fn(x, vector((1.0 if largest else -1.0,), mx.float32)))


# Registers the catalog entries (kept apart to keep this file short).
from . import reductions_specs as _specs  # noqa: E402,F401
