"""Softmax family over the last axis: softmax, log-softmax, scaled and masked softmax, logsumexp.

Every forward is one kernel that reads the row twice: an online max/sum pass (one ``exp``
per element, see :data:`~zmlx.kernels._rowkit.HEADER`) and a write pass. It also writes the
row's logsumexp in float32, so the backward kernel recomputes the probabilities exactly from
the input instead of from a rounded half-precision output. All math is float32; outputs take
the input's dtype.
"""

from __future__ import annotations

import mlx.core as mx

from ..core.backend import backend
from ..core.dtypes import dtype_name
from ._common import vector
from ._rowkit import RowKernel, check_input, rows_of, strided

NEG_INF = float("-inf")

# ---------------------------------------------------------------------------------------
# References (plain MLX, float32 math, output in the input dtype)


def _masked_logits(x, mask, scale):
    z = x.astype(mx.float32) * scale
    if mask is None:
        return z
    if mask.dtype == mx.bool_:
        return mx.where(mask, z, NEG_INF)
    return z + mask.astype(mx.float32)


def _safe_softmax(z):
    """Softmax of float32 logits where a row of only -inf gives zeros."""
    m = mx.max(z, axis=-1, keepdims=True)
    m = mx.where(m == NEG_INF, 0.0, m)
    e = mx.where(z == NEG_INF, 0.0, mx.exp(z - m))
    s = mx.sum(e, axis=-1, keepdims=True)
    return mx.where(s > 0, e / mx.where(s > 0, s, 1.0), 0.0)


def softmax_ref(x: mx.array) -> mx.array:
    """Shapes: x ``(..., D)`` -> ``(..., D)``."""
    return mx.softmax(x.astype(mx.float32), axis=-1).astype(x.dtype)


def log_softmax_ref(x: mx.array) -> mx.array:
    """Shapes: x ``(..., D)`` -> ``(..., D)``."""
    z = x.astype(mx.float32)
    return (z - mx.logsumexp(z, axis=-1, keepdims=True)).astype(x.dtype)


def scaled_softmax_ref(x: mx.array, scale: float) -> mx.array:
    """Shapes: x ``(..., D)`` -> ``(..., D)``."""
    return mx.softmax(x.astype(mx.float32) * scale, axis=-1).astype(x.dtype)


def masked_softmax_ref(x: mx.array, mask: mx.array, scale: float = 1.0) -> mx.array:
    """Shapes: x ``(..., D)``, mask broadcastable to x -> ``(..., D)``."""
    return _safe_softmax(_masked_logits(x, mask, scale)).astype(x.dtype)


def logsumexp_ref(x: mx.array, keepdims: bool = False) -> mx.array:
    """Shapes: x ``(..., D)`` -> ``(...)`` (``(..., 1)`` with ``keepdims``)."""
    return mx.logsumexp(x.astype(mx.float32), axis=-1, keepdims=keepdims).astype(x.dtype)


# ---------------------------------------------------------------------------------------
# Kernels

# Masked logit of column j: the scaled input plus an additive mask, or -inf where a boolean
# mask is false.
_LOAD = {
    None: "p[0] * static_cast<float>(x[x_b + j * x_s])",
    "add": "p[0] * static_cast<float>(x[x_b + j * x_s]) + static_cast<float>(mask[mask_b + j * mask_s])",
    "bool": "(mask[mask_b + j * mask_s] ? p[0] * static_cast<float>(x[x_b + j * x_s]) : ZX_NEG_INF)",
}


def _prologue(mask_kind, extra=()):
    text = strided("x") + ("" if mask_kind is None else strided("mask"))
    return text + "".join(strided(n) for n in extra)


def _forward_body(mask_kind, log: bool) -> str:
    load = _LOAD[mask_kind]
    if log:
        write = "out[o_b + j] = static_cast<O>(v - lse_r);"
    else:
        write = (
            "out[o_b + j] = static_cast<O>(zx_isnan(inv) ? inv : "
            "(v == ZX_NEG_INF ? 0.0f : zx_exp(v - st.m) * inv));"
        )
    return (
        _prologue(mask_kind)
        + f"""  ZxLse st = zx_lse(ZX_NEG_INF, 0.0f);
  for (uint j = r_lid; j < D; j += r_step) {{ st = zx_lse_push(st, {load}); }}
  st = zx_row_lse(st, zx_buf, zx_buf2, r_lid, r_step);
  // an all -inf row gives zeros, a row with a NaN NaNs
  const float inv = st.s > 0.0f ? 1.0f / st.s : (zx_isnan(st.s) ? st.s : 0.0f);
  const float lse_r = st.m + zx_log(st.s);
  if (r_lid == 0u) {{ lse[row] = lse_r; }}
  const long o_b = (long)row * (long)D;
  for (uint j = r_lid; j < D; j += r_step) {{
    const float v = {load};
    {write}
  }}
"""
    )


def _backward_body(mask_kind, log: bool) -> str:
    """dx = p[1] * p_j * (g_j - sum g p) (softmax) or p[1] * (g_j - p_j * sum g) (log)."""
    load = _LOAD[mask_kind]
    acc = "g_j" if log else "g_j * pj"
    out = "p[1] * (g_j - pj * tot)" if log else "p[1] * pj * (g_j - tot)"
    step = f"""    const float v = {load};
    const float pj = v == ZX_NEG_INF ? 0.0f : zx_exp(v - l);
    const float g_j = static_cast<float>(g[g_b + j * g_s]);
"""
    return (
        _prologue(mask_kind, ("g",))
        + f"""  const float l = lse[row];
  float acc = 0.0f;
  for (uint j = r_lid; j < D; j += r_step) {{
{step}    acc += {acc};
  }}
  const float tot = zx_row_sum(acc, zx_buf, r_lid, r_step);
  const long o_b = (long)row * (long)D;
  for (uint j = r_lid; j < D; j += r_step) {{
{step}    dx[o_b + j] = static_cast<O>({out});
  }}
"""
    )


def _inputs(mask_kind, *names):
    return ("x", "p") + (() if mask_kind is None else ("mask",)) + names


_FWD = {
    (mk, log): RowKernel(
        f"softmax_{mk or 'plain'}_{'log' if log else 'prob'}",
        _inputs(mk),
        ("out", "lse"),
        _forward_body(mk, log),
    )
    for mk in (None, "add", "bool")
    for log in (False, True)
    if not (log and mk is not None)
}
_BWD = {
    key: RowKernel(
        f"softmax_vjp_{key[0] or 'plain'}_{'log' if key[1] else 'prob'}",
        _inputs(key[0], "g", "lse"),
        ("dx",),
        _backward_body(*key),
    )
    for key in _FWD
}


def _make_function(mask_kind, log: bool):
    fwd, bwd = _FWD[(mask_kind, log)], _BWD[(mask_kind, log)]

    def reference(x, params, mask):
        z = _masked_logits(x, mask, params[0])
        if log:
            return (z - mx.logsumexp(z, axis=-1, keepdims=True)).astype(x.dtype)
        return (_safe_softmax(z) if mask is not None else mx.softmax(z, axis=-1)).astype(x.dtype)

    @mx.custom_function
    def fn(x, params, *mask):
        # params = (scale, scale): p[0] scales the logits, p[1] the backward's output.
        b = backend()
        if b == "cpu":
            return reference(x, params, mask[0] if mask else None), mx.zeros((1,), mx.float32)
        rows = rows_of(x)
        return tuple(
            fwd(
                x,
                params,
                *mask,
                rows=rows,
                d=x.shape[-1],
                output_shapes=[x.shape, (rows,)],
                output_dtypes=[x.dtype, mx.float32],
                template=[("O", x.dtype)],
                backend_name=b,
            )
        )

    @fn.vjp
    def fn_vjp(primals, cotangents, outputs):
        x, params, *mask = primals
        g = cotangents[0]
        mask_arr = mask[0] if mask else None
        float_mask = mask_arr is not None and mask_arr.dtype != mx.bool_
        dm = mx.zeros_like(mask_arr) if mask else None
        if backend() == "cpu":
            _, (dx,) = mx.vjp(lambda a: reference(a, params, mask_arr), [x], [g])
            if float_mask:
                _, (dm,) = mx.vjp(lambda m: reference(x, params, m), [mask_arr], [g])
        else:

            def launch(prm):
                (r,) = bwd(
                    x,
                    prm,
                    *mask,
                    g,
                    outputs[1],
                    rows=rows_of(x),
                    d=x.shape[-1],
                    output_shapes=[x.shape],
                    output_dtypes=[x.dtype],
                    template=[("O", x.dtype)],
                )
                return r

            dx = launch(params)
            if float_mask:
                # The mask's gradient is the unscaled one (broadcast_to's VJP then sums it to
                # the caller's mask shape). MLX is lazy: this runs only when it is used.
                unscaled = mx.concatenate([params[:1], mx.ones((1,), mx.float32)])
                dm = launch(unscaled).astype(mask_arr.dtype)
        grads = (dx, mx.zeros_like(params))
        return grads + ((dm,) if mask else ())

    return fn


_FNS = {key: _make_function(*key) for key in _FWD}


def _run(op: str, x, scale: float, mask=None, log: bool = False) -> mx.array:
    check_input(op, x)
    if x.size == 0:
        return mx.zeros(x.shape, dtype=x.dtype)
    kind = None
    args = []
    if mask is not None:
        if not isinstance(mask, mx.array):
            raise TypeError(f"[{op}] expected 'mask' to be an mlx array, got {type(mask).__name__}")
        if mask.dtype != mx.bool_ and mask.dtype not in (mx.float32, mx.float16, mx.bfloat16):
            raise TypeError(
                f"[{op}] expected 'mask' to be bool or float32/float16/bfloat16, got "
                f"{dtype_name(mask.dtype)}"
            )
        try:
            full = mx.broadcast_shapes(mask.shape, x.shape)
        except ValueError:
            full = None
        if full is None or tuple(full) != tuple(x.shape):
            raise ValueError(
                f"[{op}] expected 'mask' broadcastable to {tuple(x.shape)}, got {tuple(mask.shape)}"
            )
        kind = "bool" if mask.dtype == mx.bool_ else "add"
        args = [mx.broadcast_to(mask, x.shape) if mask.shape != x.shape else mask]
    out, _ = _FNS[(kind, log)](x, vector((float(scale), float(scale)), mx.float32), *args)
    return out


def softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis (float32 math, output in ``x``'s dtype).

    Shapes:
        x: ``(..., D)`` -> ``(..., D)``.
    """
    return _run("softmax", x, 1.0)


def log_softmax(x: mx.array) -> mx.array:
    """``x - logsumexp(x)`` over the last axis.

    Shapes:
        x: ``(..., D)`` -> ``(..., D)``.
    """
    return _run("log_softmax", x, 1.0, log=True)


def scaled_softmax(x: mx.array, scale: float) -> mx.array:
    """``softmax(scale * x)`` in one kernel (``scale`` is a runtime value: no rebuild).

    Shapes:
        x: ``(..., D)`` -> ``(..., D)``.
    """
    return _run("scaled_softmax", x, scale)


def masked_softmax(x: mx.array, mask: mx.array, scale: float = 1.0) -> mx.array:
    """``softmax(scale * x + mask)`` over the last axis.

    Args:
        x: logits.
        mask: broadcastable to ``x`` (for example ``(D,)`` or ``(B, 1, 1, D)``; a broadcast
            mask is read through zero strides, never copied). A float mask is added to the
            scaled logits (``-inf`` removes a column); a boolean mask keeps the columns where
            it is True, as in ``mx.fast.scaled_dot_product_attention``.
        scale: multiplies ``x`` before the mask is applied.

    Returns:
        The probabilities in ``x``'s dtype. A row whose every column is masked gives zeros,
        not NaN. The float mask gets a gradient (summed over its broadcast axes).

    Shapes:
        x: ``(..., D)``; mask: broadcastable to x -> ``(..., D)``.
    """
    if mask is None:
        raise TypeError("[masked_softmax] expected a mask, got None; use softmax")
    return _run("masked_softmax", x, scale, mask=mask)


# logsumexp: the forward kernel is the softmax one without the write pass.
_LSE = RowKernel(
    "logsumexp",
    ("x",),
    ("lse",),
    strided("x")
    + """  ZxLse st = zx_lse(ZX_NEG_INF, 0.0f);
  for (uint j = r_lid; j < D; j += r_step) {
    st = zx_lse_push(st, static_cast<float>(x[x_b + j * x_s]));
  }
  st = zx_row_lse(st, zx_buf, zx_buf2, r_lid, r_step);
  if (r_lid == 0u) { lse[row] = st.m + zx_log(st.s); }
""",
)
# dx = g * exp(x - lse): one pass over the row; g (the cotangent, one per row) may be strided.
_LSE_VJP = RowKernel(
    "logsumexp_vjp",
    ("x", "g", "lse"),
    ("dx",),
    strided("x")
    + """  const float gr = static_cast<float>(g[(long)row * ZX_STRIDES(g)[0]]);
  const float l = lse[row];
  const long o_b = (long)row * (long)D;
  for (uint j = r_lid; j < D; j += r_step) {
    dx[o_b + j] = static_cast<O>(gr * zx_exp(static_cast<float>(x[x_b + j * x_s]) - l));
  }
""",
)


@mx.custom_function
def logsumexp_f32(x: mx.array) -> mx.array:
    """Row logsumexp in float32 (kernel path); differentiable. Shapes: ``(..., D)`` -> ``(...)``."""
    b = backend()
    if b == "cpu":
        return mx.logsumexp(x.astype(mx.float32), axis=-1)
    rows = rows_of(x)
    (out,) = _LSE(
        x,
        rows=rows,
        d=x.shape[-1],
        output_shapes=[(rows,)],
        output_dtypes=[mx.float32],
        backend_name=b,
    )
    return out.reshape(x.shape[:-1])


@logsumexp_f32.vjp
def _logsumexp_vjp(primal, cotangent, output):
    x = primal
    b = backend()
    if b == "cpu":
        g = cotangent.astype(mx.float32)[..., None]
        return (g * mx.exp(x.astype(mx.float32) - output[..., None])).astype(x.dtype)
    rows = rows_of(x)
    (dx,) = _LSE_VJP(
        x,
        cotangent.reshape(rows),
        output.reshape(rows),
        rows=rows,
        d=x.shape[-1],
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
        template=[("O", x.dtype)],
        backend_name=b,
    )
    return dx


def logsumexp(x: mx.array, keepdims: bool = False) -> mx.array:
    """``log(sum(exp(x)))`` over the last axis, with an online max/sum (one pass over x).

    Shapes:
        x: ``(..., D)`` -> ``(...)`` (``(..., 1)`` with ``keepdims``).
    """
    check_input("logsumexp", x)
    if x.size == 0:
        if x.shape[-1] == 0:
            raise ValueError("[logsumexp] expected rows of at least one element, got 0")
        return mx.zeros(x.shape[:-1] + ((1,) if keepdims else ()), x.dtype)
    out = logsumexp_f32(x)
    if x.dtype != mx.float32:
        out = out.astype(x.dtype)
    return out[..., None] if keepdims else out


# Registers the catalog entries (kept apart to keep this file short).
from . import softmax_specs as _specs  # noqa: E402,F401
