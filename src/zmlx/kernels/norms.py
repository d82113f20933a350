"""Normalizations: RMSNorm, LayerNorm, their residual-add forms, and GroupNorm.

Numerics follow ``mx.fast.rms_norm`` / ``mx.fast.layer_norm``: statistics in float32, the
normalized value cast to the output dtype (``x`` promoted with ``weight``/``bias``), then
multiplied by the weight in that dtype and the bias added. ``eps`` is a runtime scalar.
Gradients of ``x``, ``weight`` and ``bias`` come from one backward kernel
(:mod:`zmlx.kernels.norm_kernels`); on the CPU the same formula runs as MLX ops.

``add_rms_norm``/``add_layer_norm`` are the residual stream of a decoder layer:
``h = x + residual`` (rounded to its dtype, as MLX's add does) and ``norm(h)`` in one pass,
returning ``(norm(h), h)``.
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx

from ..core import fallback
from ..core.backend import backend
from ..core.dtypes import promote
from . import norm_kernels as K
from ._common import as_list, check_array, check_vector, vector
from .catalog import register_table

# ---------------------------------------------------------------------------------------
# References (plain MLX)


def _out_dtype(*arrays) -> mx.Dtype:
    return promote(a.dtype for a in arrays if a is not None)


def _normalize_ref(h, ln: bool, eps: float) -> mx.array:
    h = h.astype(mx.float32)
    if ln:
        h = h - mx.mean(h, axis=-1, keepdims=True)
    return h * mx.rsqrt(mx.mean(mx.square(h), axis=-1, keepdims=True) + eps)


def _affine_ref(y, weight, bias, dtype) -> mx.array:
    y = y.astype(dtype)
    if weight is not None:
        y = y * weight.astype(dtype)
    if bias is not None:
        y = y + bias.astype(dtype)
    return y


def rms_norm_ref(x: mx.array, weight: mx.array | None = None, eps: float = 1e-5) -> mx.array:
    """RMSNorm in MLX ops: ``x / sqrt(mean(x^2) + eps) * weight``.

    Shapes:
        x: ``(..., D)``; weight: ``(D,)`` -> ``(..., D)``.
    """
    return _affine_ref(_normalize_ref(x, False, eps), weight, None, _out_dtype(x, weight))


def layer_norm_ref(
    x: mx.array, weight: mx.array | None = None, bias: mx.array | None = None, eps: float = 1e-5
) -> mx.array:
    """LayerNorm in MLX ops (two-pass variance), affine when weight/bias are given.

    Shapes:
        x: ``(..., D)``; weight, bias: ``(D,)`` -> ``(..., D)``.
    """
    y = _normalize_ref(x, True, eps)
    return _affine_ref(y, weight, bias, _out_dtype(x, weight, bias))


def add_rms_norm_ref(x, residual, weight=None, eps: float = 1e-5):
    """``h = x + residual``; returns ``(rms_norm(h, weight, eps), h)``.

    Shapes:
        x, residual: ``(..., D)``; weight: ``(D,)`` -> ``(..., D)``, ``(..., D)``.
    """
    h = x + residual
    return rms_norm_ref(h, weight, eps), h


def add_layer_norm_ref(x, residual, weight=None, bias=None, eps: float = 1e-5):
    """``h = x + residual``; returns ``(layer_norm(h, weight, bias, eps), h)``.

    Shapes:
        x, residual: ``(..., D)``; weight, bias: ``(D,)`` -> ``(..., D)``, ``(..., D)``.
    """
    h = x + residual
    return layer_norm_ref(h, weight, bias, eps), h


def norm_vjp_ref(ln: bool, x, weight, g, eps: float, has_bias: bool):
    """The backward formula of the kernel, in MLX ops: ``(dx, dw or None, db or None)``.

    ``xh = (x - mean) * inv``, ``wg = weight * g``;
    ``dx = inv * (wg - mean(wg) [LayerNorm] - xh * mean(wg * xh))``.
    """
    x32, g32 = x.astype(mx.float32), g.astype(mx.float32)
    xh = _normalize_ref(x32, ln, eps)
    xc = x32 - mx.mean(x32, axis=-1, keepdims=True) if ln else x32
    inv = mx.rsqrt(mx.mean(mx.square(xc), axis=-1, keepdims=True) + eps)
    wg = g32 * weight.astype(mx.float32) if weight is not None else g32
    dx = wg - mx.mean(wg * xh, axis=-1, keepdims=True) * xh
    if ln:
        dx = dx - mx.mean(wg, axis=-1, keepdims=True)
    lead = tuple(range(x.ndim - 1))
    dw = mx.sum(g32 * xh, axis=lead) if weight is not None else None
    db = mx.sum(g32, axis=lead) if has_bias else None
    return (inv * dx).astype(x.dtype), dw, db


# ---------------------------------------------------------------------------------------
# Differentiable ops: one mx.custom_function per (kind, add, has_w, has_b), built once.
# eps travels as a 1-element float32 array (an input like any other), so a VJP taken later
# always sees the eps of its own call.


@cache
def _function(ln: bool, add: bool, has_w: bool, has_b: bool):
    name = ("add_" if add else "") + ("layer_norm" if ln else "rms_norm")

    def split(arrays):
        arrays = list(arrays)
        x = arrays.pop(0)
        r = arrays.pop(0) if add else None
        w = arrays.pop(0) if has_w else None
        b = arrays.pop(0) if has_b else None
        return x, r, w, b, arrays[0]

    def use_kernel(d: int) -> bool:
        if backend() == "cpu":
            return False
        if not K.supported(d):
            fallback.note(name, f"rows of {d} elements exceed the per-thread register budget")
            return False
        return True

    def forward(*arrays):
        x, r, w, b, eps = split(arrays)
        h_dtype = promote([x.dtype, r.dtype]) if add else x.dtype
        out_dtype = promote([h_dtype] + [a.dtype for a in (w, b) if a is not None])
        if not use_kernel(x.shape[-1]):
            h = x + r if add else x
            y = _affine_ref(_normalize_ref(h, ln, eps), w, b, out_dtype)
            return (y, h) if add else (y,)
        return tuple(K.run_forward(ln, x, r, w, b, eps, out_dtype, h_dtype))

    fn = mx.custom_function(forward)

    @fn.vjp
    def fn_vjp(primals, cotangents, outputs):
        x, r, w, b, eps = split(as_list(primals))
        cots, outs = as_list(cotangents), as_list(outputs)
        h = outs[1] if add else x
        if use_kernel(h.shape[-1]):
            dh, dw, db = K.run_backward(ln, h, w, cots[0], eps, has_b)
        else:
            dh, dw, db = norm_vjp_ref(ln, h, w, cots[0], eps, has_b)
        grads = []
        if add:
            dh = dh + cots[1]
            grads += [dh.astype(x.dtype), dh.astype(r.dtype)]
        else:
            grads.append(dh.astype(x.dtype))
        grads += [dw.astype(w.dtype)] if has_w else []
        grads += [db.astype(b.dtype)] if has_b else []
        return tuple(grads) + (mx.zeros_like(eps),)

    return fn


def _call(name, ln, x, r, w, b, eps):
    check_array(name, "x", x)
    d = x.shape[-1]
    if r is not None:
        check_array(name, "residual", r)
        if r.shape != x.shape:
            raise ValueError(
                f"[{name}] expected 'residual' of shape {tuple(x.shape)}, got {tuple(r.shape)}"
            )
    check_vector(name, "weight", w, d)
    check_vector(name, "bias", b, d)
    if not eps >= 0:
        raise ValueError(f"[{name}] expected eps >= 0, got {eps}")
    if x.size == 0:
        h = x + r if r is not None else x
        y = mx.zeros(x.shape, _out_dtype(h, w, b))
        return (y, h) if r is not None else y
    fn = _function(ln, r is not None, w is not None, b is not None)
    args = [a for a in (x, r, w, b) if a is not None]
    outs = fn(*args, vector([eps], mx.float32))
    return tuple(outs) if r is not None else outs[0]


def rms_norm(x: mx.array, weight: mx.array | None = None, eps: float = 1e-5) -> mx.array:
    """RMSNorm: ``x / sqrt(mean(x^2, -1) + eps) * weight``, as ``mx.fast.rms_norm``.

    Args:
        x: input, normalized over its last axis.
        weight: optional scale of shape ``(D,)``.
        eps: added to the mean square (a runtime value: a new eps never rebuilds a kernel).

    Returns:
        The normalized array, in ``x``'s dtype promoted with ``weight``'s.

    Shapes:
        x: ``(..., D)``; weight: ``(D,)`` -> ``(..., D)``.
    """
    return _call("rms_norm", False, x, None, weight, None, eps)


def layer_norm(
    x: mx.array, weight: mx.array | None = None, bias: mx.array | None = None, eps: float = 1e-5
) -> mx.array:
    """LayerNorm over the last axis, as ``mx.fast.layer_norm`` (affine or not).

    Args:
        x: input.
        weight: optional scale ``(D,)``.
        bias: optional shift ``(D,)``.
        eps: added to the variance (runtime value).

    Returns:
        ``(x - mean) / sqrt(var + eps) * weight + bias`` in the promoted dtype.

    Shapes:
        x: ``(..., D)``; weight, bias: ``(D,)`` -> ``(..., D)``.
    """
    return _call("layer_norm", True, x, None, weight, bias, eps)


def add_rms_norm(
    x: mx.array, residual: mx.array, weight: mx.array | None = None, eps: float = 1e-5
) -> tuple[mx.array, mx.array]:
    """The residual stream of a decoder layer in one pass: ``h = x + residual`` and RMSNorm(h).

    Args:
        x: the block's output (attention or MLP).
        residual: the residual stream, same shape as ``x``.
        weight: optional RMSNorm scale ``(D,)``.
        eps: RMSNorm epsilon (runtime value).

    Returns:
        ``(rms_norm(h, weight, eps), h)``; ``h`` is rounded to its dtype before it is
        normalized, exactly as ``rms_norm(x + residual)`` sees it.

    Shapes:
        x, residual: ``(..., D)``; weight: ``(D,)`` -> ``(..., D)``, ``(..., D)``.
    """
    return _call("add_rms_norm", False, x, residual, weight, None, eps)


def add_layer_norm(
    x: mx.array,
    residual: mx.array,
    weight: mx.array | None = None,
    bias: mx.array | None = None,
    eps: float = 1e-5,
) -> tuple[mx.array, mx.array]:
    """``h = x + residual`` and LayerNorm(h) in one pass; returns ``(layer_norm(h), h)``.

    Shapes:
        x, residual: ``(..., D)``; weight, bias: ``(D,)`` -> ``(..., D)``, ``(..., D)``.
    """
    return _call("add_layer_norm", True, x, residual, weight, bias, eps)


# ---------------------------------------------------------------------------------------
# Catalog entries

CASES = (
    {"id": "1x31", "shape": (1, 31)},
    {"id": "3x33", "shape": (3, 33)},
    {"id": "2x3x256", "shape": (2, 3, 256)},
    {"id": "4x257", "shape": (4, 257)},
    {"id": "2x4097", "shape": (2, 4097)},
    {"id": "transposed", "shape": (6, 64), "transpose": True},
    {"id": "decode", "shape": (1, 1, 4096)},
    {"id": "prefill", "shape": (2, 64, 512)},
)
BENCH = (
    {"id": "decode-2048", "shape": (1, 1, 2048)},
    {"id": "decode-4096", "shape": (1, 1, 4096)},
    {"id": "prefill-4096", "shape": (1, 1024, 4096)},
    {"id": "qk-norm-decode", "shape": (1, 32, 1, 128)},
    {"id": "qk-norm-prefill", "shape": (1, 32, 1024, 128)},
)


def _x(case, dtype, rng, scale=1.0):
    shape = case["shape"]
    if case.get("transpose"):
        shape = shape[::-1]
    a = mx.array(rng.normal(size=shape).astype("float32") * scale).astype(dtype)
    return a.T if case.get("transpose") else a


def _vec(case, dtype, rng, center):
    d = case["shape"][-1]
    return mx.array((center + 0.2 * rng.normal(size=(d,))).astype("float32")).astype(dtype)


def _stock_add(norm):
    def stock(x, r, *rest):
        h = x + r
        return norm(h, *rest), h

    return stock


_EPS_CASE = 1e-5
_NORM_SPECS = (
    (
        "rms_norm",
        rms_norm,
        rms_norm_ref,
        lambda c, d, g: (_x(c, d, g), _vec(c, d, g, 1.0), _EPS_CASE),
        mx.fast.rms_norm,
        (0, 1),
        "RMSNorm with weight; backward kernel for x and weight",
    ),
    (
        "layer_norm",
        layer_norm,
        layer_norm_ref,
        lambda c, d, g: (_x(c, d, g, 2.0) + 0.5, _vec(c, d, g, 1.0), _vec(c, d, g, 0.0), _EPS_CASE),
        mx.fast.layer_norm,
        (0, 1, 2),
        "LayerNorm with weight and bias; backward kernel for x, weight and bias",
    ),
    (
        "add_rms_norm",
        add_rms_norm,
        add_rms_norm_ref,
        lambda c, d, g: (_x(c, d, g), _x(c, d, g, 4.0), _vec(c, d, g, 1.0), _EPS_CASE),
        _stock_add(mx.fast.rms_norm),
        (0, 1, 2),
        "h = x + residual and RMSNorm(h) in one pass; returns (normed, h)",
    ),
    (
        "add_layer_norm",
        add_layer_norm,
        add_layer_norm_ref,
        lambda c, d, g: (
            _x(c, d, g),
            _x(c, d, g, 4.0),
            _vec(c, d, g, 1.0),
            _vec(c, d, g, 0.0),
            _EPS_CASE,
        ),
        _stock_add(mx.fast.layer_norm),
        (0, 1, 2, 3),
        "h = x + residual and LayerNorm(h) in one pass; returns (normed, h)",
    ),
)

register_table(
    "norms",
    _NORM_SPECS,
    ("name", "op", "ref", "make_inputs", "stock", "grad_argnums", "description"),
    cases=CASES,
    bench_cases=BENCH,
)

from . import group_norm as _group_norm  # noqa: E402,F401  (registers group_norm)
