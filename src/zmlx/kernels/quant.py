"""Quantized dense ops for decode: qmv and its fusions, fused q/k/v projection.

Weights are in MLX's formats (``mx.quantize``): affine 4/8-bit with group sizes 32/64/128 and
mxfp4; the kernels are in :mod:`.quant_kernels`. Every op has a ``<op>_ref`` in plain MLX that
computes what mlx-lm's ``QuantizedLinear`` computes (``mx.quantized_matmul(..., transpose=True)``
then ``+ bias``), which is the CPU path and the fallback for formats and sizes the kernels do
not cover (other bit widths and modes, more than :data:`~.quant_kernels.MAX_ROWS` rows).
Kernels accumulate in float32 and round to the activation dtype where mlx-lm's separate ops
would (after each projection, after a bias add).
"""

from __future__ import annotations

import math

import mlx.core as mx

from ..core import fallback
from ..core.backend import backend
from ..core.dtypes import check_float, dtype_name
from ..core.kernel import scalar
from . import mma_kernels as mmk
from . import quant_kernels as qk

# ---------------------------------------------------------------------------------------
# References


def qmv_ref(x, w, scales, biases=None, group_size=64, bits=4, mode="affine"):
    """``x @ dequantize(w).T`` as ``mx.quantized_matmul(..., transpose=True)``.

    Shapes:
        x: ``(..., D)``; w: ``(N, D * bits / 32)`` -> ``(..., N)``.
    """
    return mx.quantized_matmul(
        x, w, scales, biases, transpose=True, group_size=group_size, bits=bits, mode=mode
    )


def qmv_bias_ref(x, w, scales, biases, bias, group_size=64, bits=4, mode="affine"):
    """``QuantizedLinear`` with a bias. Shapes: ``bias (N,)``."""
    return qmv_ref(x, w, scales, biases, group_size, bits, mode) + bias


def qmv_residual_ref(x, w, scales, biases, residual, group_size=64, bits=4, mode="affine"):
    """``residual + qmv(x)`` (a projection followed by the residual add). ``residual (..., N)``."""
    return residual + qmv_ref(x, w, scales, biases, group_size, bits, mode)


def swiglu_ref(gate, up):
    """mlx-lm's ``swiglu(gate, up) = silu(gate) * up`` in the input dtype."""
    return gate * mx.sigmoid(gate) * up


def qmv_swiglu_ref(x, wg, sg, bg, wu, su, bu, group_size=64, bits=4, mode="affine"):
    """A dense MLP's ``swiglu(gate_proj(x), up_proj(x))``. Shapes: ``x (..., D)`` -> ``(..., I)``."""
    gate = qmv_ref(x, wg, sg, bg, group_size, bits, mode)
    up = qmv_ref(x, wu, su, bu, group_size, bits, mode)
    return swiglu_ref(gate, up)


def geglu_ref(gate, up, approximate="none"):
    """mlx-lm's GeGLU in the input dtype: ``nn.gelu(gate) * up`` (erf; Gemma) or, with
    ``approximate="tanh"``, ``nn.gelu_approx(gate) * up`` (Gemma 2, 3 and 4, Gemma 4's experts)."""
    if approximate == "tanh":
        return 0.5 * gate * (1 + mx.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3))) * up
    return gate * (1 + mx.erf(gate / math.sqrt(2))) / 2 * up


def qmv_geglu_ref(x, wg, sg, bg, wu, su, bu, group_size=64, bits=4, mode="affine",
                  approximate="none"):  # fmt: skip
    """A Gemma MLP's ``geglu(gate_proj(x), up_proj(x))``. Shapes: ``x (..., D)`` -> ``(..., I)``."""
    gate = qmv_ref(x, wg, sg, bg, group_size, bits, mode)
    up = qmv_ref(x, wu, su, bu, group_size, bits, mode)
    return geglu_ref(gate, up, approximate)


def qkv_proj_ref(x, wq, sq, bq, wk, sk, bk, wv, sv, bv, group_size=64, bits=4, mode="affine",
                 bias_q=None, bias_k=None, bias_v=None):  # fmt: skip
    """Attention's q, k and v projections. Shapes: ``x (..., D)`` -> three ``(..., N_*)``."""
    outs = []
    for w, s, b, lin in ((wq, sq, bq, bias_q), (wk, sk, bk, bias_k), (wv, sv, bv, bias_v)):
        y = qmv_ref(x, w, s, b, group_size, bits, mode)
        outs.append(y if lin is None else y + lin)
    return tuple(outs)


# ---------------------------------------------------------------------------------------
# Input checks


def check_qweight(op, name, w, scales, biases, group_size, bits, mode, stacked=False) -> int:
    """Validate one quantized weight; returns its input size ``D``."""
    want = 3 if stacked else 2
    if not isinstance(w, mx.array) or w.dtype != mx.uint32 or w.ndim != want:
        got = f"{dtype_name(w.dtype)} {tuple(w.shape)}" if isinstance(w, mx.array) else type(w)
        raise ValueError(f"[{op}] expected '{name}' to be a {want}-d uint32 array, got {got}")
    if mode == "affine":
        if biases is None:
            raise ValueError(f"[{op}] expected biases for '{name}' in affine mode, got None")
    elif biases is not None:
        raise ValueError(f"[{op}] expected no biases for '{name}' in {mode} mode")
    if not isinstance(scales, mx.array):
        raise ValueError(f"[{op}] expected scales for '{name}' as an mlx array, got {scales!r}")
    wshape = w.shape
    d = wshape[-1] * 32 // bits
    if d % group_size:
        raise ValueError(
            f"[{op}] expected '{name}' rows of a multiple of the group size {group_size} "
            f"({bits} bits), got {d} inputs"
        )
    for what, a in (("scales", scales), ("biases", biases)):
        if a is None:
            continue
        ashape = a.shape
        if ashape[-1] * group_size == d and ashape[:-1] == wshape[:-1]:
            continue
        gshape = tuple(wshape[:-1]) + (d // group_size,)
        if tuple(ashape) != gshape:
            raise ValueError(
                f"[{op}] expected {what} of '{name}' with shape {gshape} ({bits} bits, group "
                f"size {group_size}), got {tuple(a.shape)}"
            )
    return d


def check_x(op, x, d, name="x") -> None:
    if not isinstance(x, mx.array):
        raise TypeError(f"[{op}] expected '{name}' to be an mlx array, got {type(x).__name__}")
    check_float(op, name, x)
    if x.ndim == 0 or x.shape[-1] != d:
        raise ValueError(
            f"[{op}] expected '{name}' with {d} inputs on its last axis, got {x.shape}"
        )


def kernel_reason(x, scales, group_size, bits, mode, rows) -> str | None:
    """Why the kernel path cannot take this call (None when it can)."""
    if not qk.kernel_covers(mode, bits, group_size):
        return f"no kernel for mode={mode} bits={bits} group_size={group_size}"
    if rows > qk.MAX_ROWS:
        return f"{rows} rows > {qk.MAX_ROWS} (decode kernels; prefill uses stock MLX)"
    want = x.dtype if mode == "affine" else mx.uint8
    if scales.dtype != want:
        return f"scales dtype {dtype_name(scales.dtype)} is not {dtype_name(want)}"
    return None


def use_kernel(op, x, scales, group_size, bits, mode, rows, verbose=False) -> bool:
    if backend() == "cpu":
        return False
    reason = kernel_reason(x, scales, group_size, bits, mode, rows)
    if reason:
        fallback.note(op, reason, verbose=verbose)
        return False
    return True


def fmt_template(x, d, bits, group_size) -> list:
    return [("T", x.dtype), ("D", d), ("BITS", bits), ("GROUP_SIZE", group_size)]


# ---------------------------------------------------------------------------------------
# Public ops


def weight_inputs(mats, mode) -> list:
    """Kernel inputs of quantized weights ``mats`` (``(w, scales, biases)`` each): w, scales
    and, for affine, biases."""
    ins = []
    for w, s, b in mats:
        ins += [w, s] + ([b] if mode == "affine" else [])
    return ins


def _dense(op, kind, x, mats, group_size, bits, mode, lin=None, res=None, verbose=False):
    """Run a dense matvec kernel (``mats``: list of (w, scales, biases)) or return None: the
    tile kernel where :func:`~zmlx.kernels.quant_kernels.tile_plan` takes the rows, else the
    one-word kernel."""
    d = x.shape[-1]
    rows = x.size // d if d else 0
    if rows == 0 or not use_kernel(op, x, mats[0][1], group_size, bits, mode, rows, verbose):
        return None
    ns = [m[0].shape[0] for m in mats]
    joint = 1 if kind in ("plain", "qkv") else 2
    plan = qk.tile_plan(d, bits, group_size, joint, sum(ns) if kind == "qkv" else ns[0], rows)
    flags = (lin is not None, res is not None)
    mw = mmk.group_warps(d)
    if (mmk.MMA_DENSE and backend() == "cuda" and kind != "qkv"
            and mmk.covers_dense(kind, mode, bits, group_size, x.dtype, d, mw)):  # fmt: skip
        kern = mmk.dense_kernel(kind, lin is not None, res is not None)
        ins = [x] + weight_inputs(mats, mode) + list(lin or ()) + ([res] if res is not None else [])
        nb = math.ceil(ns[0] / mmk.ROWS)
        tmpl = fmt_template(x, d, bits, group_size)
        tmpl += [("N", ns[0]), ("R", mmk.ROWS), ("NB", nb), ("W", mw),
                 ("STEPS", d // (64 * mw))]  # fmt: skip
        grid, tg = qk.warp_groups(rows * nb, mw)
        return kern(*ins, scalar(rows, mx.int32), output_shapes=[x.shape[:-1] + (ns[0],)],
                    output_dtypes=[x.dtype], grid=grid, threadgroup=tg,
                    template=tmpl)  # fmt: skip
    split = qk.split_warps(d, bits, group_size) if qk.SPLIT_DENSE and d <= qk.X_REG_MAX else 0
    if plan is None and split and kind == "qkv":
        kern = qk.split_qkv_kernel(mode, lin is not None, qk.SPLIT_ALL_ROWS)
        nbs = [math.ceil(n / qk.SPLIT_ROWS) for n in ns]
        tmpl = fmt_template(x, d, bits, group_size) + [
            ("NQ", ns[0]), ("NK", ns[1]), ("NV", ns[2]), ("R", qk.SPLIT_ROWS), ("NB", sum(nbs)),
            ("NBQ", nbs[0]), ("NBK", nbs[1]), ("W", split)]  # fmt: skip
        grid, tg = qk.warp_groups(rows * sum(nbs), split)
        return kern(*([x] + weight_inputs(mats, mode) + list(lin or ())), scalar(rows, mx.int32),
                    output_shapes=[x.shape[:-1] + (n,) for n in ns],
                    output_dtypes=[x.dtype] * 3, grid=grid, threadgroup=tg,
                    template=tmpl)  # fmt: skip
    if plan is None and split:
        kern = qk.split_matvec_kernel(kind, mode, True, lin is not None, qk.SPLIT_ALL_ROWS,
                                      gather=False, has_res=res is not None)  # fmt: skip
        ins = [x] + weight_inputs(mats, mode) + list(lin or ()) + ([res] if res is not None else [])
        nb = math.ceil(ns[0] / qk.SPLIT_ROWS)
        tmpl = fmt_template(x, d, bits, group_size)
        tmpl += [("N", ns[0]), ("R", qk.SPLIT_ROWS), ("NB", nb), ("W", split)]
        grid, tg = qk.warp_groups(rows * nb, split)
        return kern(*ins, scalar(rows, mx.int32), output_shapes=[x.shape[:-1] + (ns[0],)],
                    output_dtypes=[x.dtype], grid=grid, threadgroup=tg, template=tmpl)  # fmt: skip
    if plan is not None:
        vw, r = plan
        kern = qk.tile_matvec_kernel(kind, mode, False, False, *flags)
        per = qk.TILE_WARPS * r  # rows per group
        tmpl = [("R", r), ("VW", vw), ("WB", qk.TILE_WARPS)]
    else:
        r = qk.rows_per_warp(rows, max(ns), joint, d)
        batch, vec = qk.load_plan(d, bits)
        kern = qk.matvec_kernel(kind, mode, False, False, *flags, d <= qk.X_REG_MAX,
                                batch=batch, vec=vec)  # fmt: skip
        per = r  # rows per warp
        tmpl = [("R", r)]
    ins = [x] + weight_inputs(mats, mode) + (list(lin) if lin is not None else [])
    ins += [res] if res is not None else []
    tmpl = fmt_template(x, d, bits, group_size) + tmpl
    if kind == "qkv":
        nbs = [math.ceil(n / per) for n in ns]
        nb = sum(nbs)
        tmpl += [("NQ", ns[0]), ("NK", ns[1]), ("NV", ns[2]), ("NBQ", nbs[0]), ("NBK", nbs[1])]
        shapes = [x.shape[:-1] + (n,) for n in ns]
    else:
        nb = math.ceil(ns[0] / per)
        tmpl += [("N", ns[0])]
        shapes = [x.shape[:-1] + (ns[0],)]
    if plan is not None:
        grid, tg = qk.warp_groups(rows * nb, qk.TILE_WARPS)
    else:
        grid, tg = qk.launch_shape(rows * nb)
    return kern(*ins, scalar(rows, mx.int32), output_shapes=shapes,
                output_dtypes=[x.dtype] * len(shapes), grid=grid, threadgroup=tg,
                template=tmpl + [("NB", nb)])  # fmt: skip


def qmv(x, w, scales, biases=None, group_size=64, bits=4, mode="affine", *, verbose=False):
    """Quantized matrix-vector product for decode, ``x @ dequantize(w).T``.

    Args:
        x: activations, float32/float16/bfloat16.
        w, scales, biases: an MLX-quantized weight (``biases`` is None for mxfp4).
        group_size, bits, mode: its format.
        verbose: print why the reference path was taken, if it was.

    Shapes:
        x: ``(..., D)``; w: ``(N, D * bits / 32)`` -> ``(..., N)``.
    """
    op = "qmv"
    d = check_qweight(op, "w", w, scales, biases, group_size, bits, mode)
    check_x(op, x, d)
    out = _dense(op, "plain", x, [(w, scales, biases)], group_size, bits, mode, verbose=verbose)
    return out[0] if out else qmv_ref(x, w, scales, biases, group_size, bits, mode)


def qmv_bias(x, w, scales, biases, bias, group_size=64, bits=4, mode="affine", *, verbose=False):
    """:func:`qmv` plus a bias in one kernel (``QuantizedLinear(bias=True)``).

    Shapes:
        x: ``(..., D)``; bias: ``(N,)`` -> ``(..., N)``.
    """
    op = "qmv_bias"
    d = check_qweight(op, "w", w, scales, biases, group_size, bits, mode)
    check_x(op, x, d)
    _check_shape(op, "bias", bias, (w.shape[0],), x.dtype)
    out = _dense(op, "plain", x, [(w, scales, biases)], group_size, bits, mode, lin=[bias],
                 verbose=verbose)  # fmt: skip
    return out[0] if out else qmv_bias_ref(x, w, scales, biases, bias, group_size, bits, mode)


def qmv_residual(
    x, w, scales, biases, residual, group_size=64, bits=4, mode="affine", *, verbose=False
):
    """``residual + qmv(x)`` in one kernel (an output projection and its residual add).

    Shapes:
        x: ``(..., D)``; residual: ``(..., N)`` -> ``(..., N)``.
    """
    op = "qmv_residual"
    d = check_qweight(op, "w", w, scales, biases, group_size, bits, mode)
    check_x(op, x, d)
    _check_shape(op, "residual", residual, x.shape[:-1] + (w.shape[0],), x.dtype)
    out = _dense(op, "plain", x, [(w, scales, biases)], group_size, bits, mode, res=residual,
                 verbose=verbose)  # fmt: skip
    if out:
        return out[0]
    return qmv_residual_ref(x, w, scales, biases, residual, group_size, bits, mode)


def _gated(op, kind, x, wg, sg, bg, wu, su, bu, group_size, bits, mode, verbose):
    """Checks, then the two-weight matvec kernel with activation ``kind``, or None."""
    d = check_qweight(op, "wg", wg, sg, bg, group_size, bits, mode)
    if check_qweight(op, "wu", wu, su, bu, group_size, bits, mode) != d or wu.shape != wg.shape:
        raise ValueError(f"[{op}] expected wu of shape {wg.shape} like wg, got {wu.shape}")
    check_x(op, x, d)
    mats = [(wg, sg, bg), (wu, su, bu)]
    out = _dense(op, kind, x, mats, group_size, bits, mode, verbose=verbose)
    return out[0] if out else None


def qmv_swiglu(x, wg, sg, bg, wu, su, bu, group_size=64, bits=4, mode="affine", *, verbose=False):
    """A dense MLP's gate and up projections and SwiGLU in one kernel.

    Returns ``silu(x @ Wg.T) * (x @ Wu.T)``; both projections are rounded to the activation
    dtype before the activation, as mlx-lm's separate ops are.

    Shapes:
        x: ``(..., D)``; wg, wu: ``(I, D * bits / 32)`` -> ``(..., I)``.
    """
    out = _gated("qmv_swiglu", "swiglu", x, wg, sg, bg, wu, su, bu, group_size, bits, mode,
                 verbose)  # fmt: skip
    if out is not None:
        return out
    return qmv_swiglu_ref(x, wg, sg, bg, wu, su, bu, group_size, bits, mode)


GELU_KINDS = {"none": "geglu", "tanh": "geglu_tanh"}  # approximate -> kernel activation


def gelu_kind(op, approximate) -> str:
    if approximate not in GELU_KINDS:
        raise ValueError(f"[{op}] expected approximate 'none' or 'tanh', got {approximate!r}")
    return GELU_KINDS[approximate]


def qmv_geglu(x, wg, sg, bg, wu, su, bu, group_size=64, bits=4, mode="affine",
              approximate="none", *, verbose=False):  # fmt: skip
    """A Gemma MLP's gate and up projections and GeGLU in one kernel.

    Returns ``gelu(x @ Wg.T) * (x @ Wu.T)`` with the erf GELU (``approximate="none"``, Gemma)
    or the tanh approximation (``"tanh"``, Gemma 2/3/4); the projections are rounded to the
    activation dtype first, as mlx-lm's separate ops are, the activation is float32.

    Shapes:
        x: ``(..., D)``; wg, wu: ``(I, D * bits / 32)`` -> ``(..., I)``.
    """
    op = "qmv_geglu"
    kind = gelu_kind(op, approximate)
    out = _gated(op, kind, x, wg, sg, bg, wu, su, bu, group_size, bits, mode, verbose)
    if out is not None:
        return out
    return qmv_geglu_ref(x, wg, sg, bg, wu, su, bu, group_size, bits, mode, approximate)


def qkv_proj(x, wq, sq, bq, wk, sk, bk, wv, sv, bv, group_size=64, bits=4, mode="affine",
             bias_q=None, bias_k=None, bias_v=None, *, verbose=False):  # fmt: skip
    """Attention's q, k and v projections for decode in one launch.

    Args:
        x: the normed hidden state.
        wq, sq, bq, wk, sk, bk, wv, sv, bv: the three quantized weights (same format).
        bias_q, bias_k, bias_v: optional linear biases (all or none; GPT-OSS has them).

    Shapes:
        x: ``(..., D)`` -> q ``(..., NQ)``, k ``(..., NK)``, v ``(..., NV)``.
    """
    op = "qkv_proj"
    mats = [(wq, sq, bq), (wk, sk, bk), (wv, sv, bv)]
    d = check_qweight(op, "wq", wq, sq, bq, group_size, bits, mode)
    for name, (w, s, b) in zip(("wk", "wv"), mats[1:]):
        if check_qweight(op, name, w, s, b, group_size, bits, mode) != d:
            raise ValueError(f"[{op}] expected {name} with {d} inputs like wq, got {w.shape}")
    check_x(op, x, d)
    lins = [bias_q, bias_k, bias_v]
    if any(b is not None for b in lins):
        if any(b is None for b in lins):
            raise ValueError(f"[{op}] expected all of bias_q, bias_k, bias_v or none")
        for name, b, (w, _, _) in zip(("bias_q", "bias_k", "bias_v"), lins, mats):
            _check_shape(op, name, b, (w.shape[0],), x.dtype)
    else:
        lins = None
    out = _dense(op, "qkv", x, mats, group_size, bits, mode, lin=lins, verbose=verbose)
    if out:
        return tuple(out)
    return qkv_proj_ref(x, wq, sq, bq, wk, sk, bk, wv, sv, bv, group_size, bits, mode, bias_q,
                        bias_k, bias_v)  # fmt: skip


def _check_shape(op, name, a, shape, dtype) -> None:
    if not isinstance(a, mx.array) or tuple(a.shape) != tuple(shape):
        got = tuple(a.shape) if isinstance(a, mx.array) else type(a).__name__
        raise ValueError(f"[{op}] expected '{name}' of shape {tuple(shape)}, got {got}")
    if a.dtype != dtype:
        raise TypeError(
            f"[{op}] expected '{name}' in {dtype_name(dtype)}, got {dtype_name(a.dtype)}"
        )


# Registers the catalog entries (kept apart to keep this file short).
from . import quant_specs as _specs  # noqa: E402,F401
from .quantize import dequantize, dequantize_ref, quantize, quantize_ref  # noqa: E402

__all__ = [
    "dequantize",
    "geglu_ref",
    "dequantize_ref",
    "qkv_proj",
    "qkv_proj_ref",
    "qmv",
    "qmv_bias",
    "qmv_bias_ref",
    "qmv_geglu",
    "qmv_geglu_ref",
    "qmv_ref",
    "qmv_residual",
    "qmv_residual_ref",
    "qmv_swiglu",
    "qmv_swiglu_ref",
    "quantize",
    "quantize_ref",
    "swiglu_ref",
]
