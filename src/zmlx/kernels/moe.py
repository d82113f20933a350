"""MoE expert kernels over quantized weights (the weighted combine is in :mod:`.moe_combine`).

mlx-lm's ``SwitchGLU`` runs three ``mx.gather_qmm`` calls (gate, up, down), SwiGLU, then each
block combines ``(y * scores[..., None]).sum(axis=-2)``. Here the selected experts' gate and up
projections and the activation are ONE kernel (:func:`gather_qmv_swiglu`), and the down
projection times the router weight, summed over the ``K`` experts, is another
(:func:`gather_qmv_combine`; one warp owns an output row across all ``K`` experts, so no
atomics). Kernel bodies are in :mod:`.quant_kernels`; every op has a plain-MLX ``<op>_ref``.
"""

from __future__ import annotations

import math

import mlx.core as mx

from ..core.backend import backend
from ..core.dtypes import promote
from ..core.kernel import scalar
from . import fused_experts as fe
from . import mma_kernels as mmk
from . import moe_kernels as mk
from . import quant_kernels as qk
from ._common import check_prenorm, prenorm_foldable, prenorm_ref, vector
from .moe_combine import (
    check_like,
    combine_launch,
    moe_combine,
    moe_combine_exact,
    moe_combine_exact_ref,
    moe_combine_ref,
    moe_combine_shared,
    moe_combine_shared_ref,
    shared_add,
)
from .quant import (
    GELU_KINDS,
    check_qweight,
    check_x,
    fmt_template,
    geglu_ref,
    gelu_kind,
    swiglu_ref,
    use_kernel,
    weight_inputs,
)

# ---------------------------------------------------------------------------------------
# References (what mlx-lm computes)


def _gather(x, w, scales, biases, indices, group_size, bits, mode, bias=None):
    y = mx.gather_qmm(
        mx.expand_dims(x, -2),
        w,
        scales,
        biases,
        rhs_indices=indices,
        transpose=True,
        group_size=group_size,
        bits=bits,
        mode=mode,
    ).squeeze(-2)
    return y if bias is None else y + bias[indices]


def _slots(x, indices):
    """x as one row per slot: ``(..., D)`` -> ``(..., 1, D)`` broadcast over ``K``."""
    return x if x.ndim == indices.ndim + 1 else mx.expand_dims(x, -2)


def gather_qmv_ref(x, w, scales, biases, indices, group_size=64, bits=4, mode="affine",
                   bias=None):  # fmt: skip
    """``QuantizedSwitchLinear``: each token times each of its selected experts.

    Shapes:
        x: ``(..., D)`` or ``(..., K, D)``; w: ``(E, N, D * bits / 32)``; indices:
        ``(..., K)``; bias: ``(E, N)`` -> ``(..., K, N)``.
    """
    return _gather(_slots(x, indices), w, scales, biases, indices, group_size, bits, mode, bias)


def swiglu_oai_ref(gate, up, alpha=1.702, limit=7.0):
    """GPT-OSS's clamped SwiGLU (mlx-lm ``swiglu_oai``)."""
    gate = mx.minimum(gate, limit)
    up = mx.clip(up, -limit, limit)
    return (up + 1.0) * (gate * mx.sigmoid(alpha * gate))


def gather_qmv_swiglu_ref(x, wg, sg, bg, wu, su, bu, indices, group_size=64, bits=4,
                          mode="affine", bias_gate=None, bias_up=None, activation="swiglu",
                          alpha=1.702, limit=7.0):  # fmt: skip
    """``SwitchGLU``'s gate and up projections and activation. Shapes: ``-> (..., K, I)``."""
    xs = _slots(x, indices)
    g = _gather(xs, wg, sg, bg, indices, group_size, bits, mode, bias_gate)
    u = _gather(xs, wu, su, bu, indices, group_size, bits, mode, bias_up)
    if activation == "swiglu_oai":
        return swiglu_oai_ref(g, u, alpha, limit)
    if activation in ("geglu", "geglu_tanh"):  # Gemma 4's experts: gelu_approx(g) * u
        return geglu_ref(g, u, "tanh" if activation == "geglu_tanh" else "none")
    return swiglu_ref(g, u)


def gather_qmv_swiglu_oai_ref(x, wg, sg, bg, wu, su, bu, indices, group_size=32, bits=4,
                              mode="mxfp4", bias_gate=None, bias_up=None):  # fmt: skip
    return gather_qmv_swiglu_ref(x, wg, sg, bg, wu, su, bu, indices, group_size, bits, mode,
                                 bias_gate, bias_up, "swiglu_oai")  # fmt: skip


def gather_qmv_geglu_ref(x, wg, sg, bg, wu, su, bu, indices, group_size=64, bits=4,
                         mode="affine", bias_gate=None, bias_up=None,
                         approximate="none"):  # fmt: skip
    return gather_qmv_swiglu_ref(x, wg, sg, bg, wu, su, bu, indices, group_size, bits, mode,
                                 bias_gate, bias_up, GELU_KINDS[approximate])  # fmt: skip


def gather_qmv_combine_ref(h, w, scales, biases, indices, weights, group_size=64, bits=4,
                           mode="affine", bias=None, shared=None, shared_gate=None):  # fmt: skip
    """Down projection of each selected expert, weighted and summed over experts.

    Shapes:
        h: ``(..., K, I)``; w: ``(E, D, I * bits / 32)``; indices, weights: ``(..., K)``
        -> ``(..., D)``.
    """
    y = _gather(h, w, scales, biases, indices, group_size, bits, mode, bias)
    return shared_add(moe_combine_exact_ref(y, weights), shared, shared_gate)


# ---------------------------------------------------------------------------------------
# Checks


def _check_indices(op, indices, lead, k=None):
    if not isinstance(indices, mx.array) or not mx.issubdtype(indices.dtype, mx.integer):
        raise TypeError(f"[{op}] expected integer expert 'indices'")
    if tuple(indices.shape[:-1]) != tuple(lead) or (k is not None and indices.shape[-1] != k):
        raise ValueError(
            f"[{op}] expected indices of shape {tuple(lead)} + (K,), got {tuple(indices.shape)}"
        )


def _x_layout(op, x, indices) -> tuple[bool, tuple]:
    """Whether x has one row per slot, and the token shape."""
    if x.ndim == indices.ndim + 1 and x.shape[:-1] == indices.shape:
        return True, tuple(indices.shape[:-1])
    _check_indices(op, indices, x.shape[:-1])
    return False, tuple(x.shape[:-1])


# ---------------------------------------------------------------------------------------
# Ops


def _gather_launch(op, kind, x, mats, indices, group_size, bits, mode, lins, fp, verbose,
                   prenorm=None):  # fmt: skip
    per_slot, lead = _x_layout(op, x, indices)
    k = indices.shape[-1]
    slots = math.prod(lead) * k
    d = x.shape[-1]
    if slots == 0 or not use_kernel(op, x, mats[0][1], group_size, bits, mode,
                                    math.prod(lead), verbose):  # fmt: skip
        return None
    regs = d <= qk.X_REG_MAX
    if prenorm is not None and (per_slot or not regs or not prenorm_foldable(x, prenorm)):
        return None  # the caller applies the pre-norm in MLX ops first
    n = mats[0][0].shape[1]
    joint = 1 if kind == "plain" else 2
    split = qk.split_warps(d, bits, group_size) if regs else 0
    plan = qk.tile_plan(d, bits, group_size, joint, n, slots) if prenorm is None else None
    mw = mmk.group_warps(d)
    if (qk.MMA_GATE_UP and backend() == "cuda"
            and mmk.covers(kind, mode, bits, group_size, x.dtype, d, mw, lins is not None,
                           prenorm is not None)):  # fmt: skip
        nb = math.ceil(n / mmk.ROWS)
        tmpl = fmt_template(x, d, bits, group_size)
        tmpl += [("N", n), ("K", k), ("R", mmk.ROWS), ("NB", nb), ("W", mw),
                 ("STEPS", d // (64 * mw))]  # fmt: skip
        grid, tg = qk.warp_groups(slots * nb, mw)
        return mmk.gate_up_kernel(kind, per_slot)(
            x, *weight_inputs(mats, mode), indices, scalar(slots, mx.int32),
            output_shapes=[lead + (k, n)], output_dtypes=[x.dtype], grid=grid, threadgroup=tg,
            template=tmpl, verbose=verbose)[0]  # fmt: skip
    if plan is None and split and prenorm is None:
        kern = qk.split_matvec_kernel(kind, mode, per_slot, lins is not None, qk.SPLIT_ALL_ROWS)
        ins = [x] + weight_inputs(mats, mode) + [indices] + list(lins or ())
        ins += [] if fp is None else [fp]
        nb = math.ceil(n / qk.SPLIT_ROWS)
        tmpl = fmt_template(x, d, bits, group_size)
        tmpl += [("N", n), ("R", qk.SPLIT_ROWS), ("NB", nb), ("K", k), ("W", split)]
        grid, tg = qk.warp_groups(slots * nb, split)
        return kern(*ins, scalar(slots, mx.int32), output_shapes=[lead + (k, n)],
                    output_dtypes=[x.dtype], grid=grid, threadgroup=tg, template=tmpl,
                    min_groups=qk.SPLIT_MIN_GROUPS)[0]  # fmt: skip
    tmpl = fmt_template(x, d, bits, group_size) + [("N", n), ("K", k)]
    if plan is not None:
        vw, r = plan
        nb = math.ceil(n / (qk.TILE_WARPS * r))
        kern = qk.tile_matvec_kernel(kind, mode, True, per_slot, lins is not None, False)
        tmpl += [("VW", vw), ("WB", qk.TILE_WARPS)]
        grid, tg = qk.warp_groups(slots * nb, qk.TILE_WARPS)
    else:
        r = qk.rows_per_warp(slots, n, joint, d)
        nb = math.ceil(n / r)
        kern = qk.matvec_kernel(kind, mode, True, per_slot, lins is not None, False, regs,
                                prenorm is not None, *qk.load_plan(d, bits))  # fmt: skip
        grid, tg = qk.launch_shape(slots * nb)
    ins = [x] + weight_inputs(mats, mode) + [indices]
    if lins is not None:
        ins += lins
    if fp is not None:
        ins.append(fp)
    if prenorm is not None:
        ins += [prenorm[0], prenorm[1], scalar(prenorm[2], mx.float32)]
    return kern(
        *ins,
        scalar(slots, mx.int32),
        output_shapes=[lead + (k, n)],
        output_dtypes=[x.dtype],
        grid=grid,
        threadgroup=tg,
        template=tmpl + [("R", r), ("NB", nb)],
    )[0]


def gather_qmv(x, w, scales, biases, indices, group_size=64, bits=4, mode="affine", bias=None,
               *, verbose=False):  # fmt: skip
    """Each token times each of its selected experts' quantized weights (decode).

    Args:
        x: activations, one row per token (shared by its experts) or one per slot.
        w, scales, biases: experts' weights stacked on the first axis (``E``).
        indices: selected experts per token (any integer dtype), each in ``[0, E)``; like
            ``mx.gather_qmm`` on a GPU, out-of-range ids are not checked.
        bias: optional per-expert linear bias ``(E, N)``.

    Shapes:
        x: ``(..., D)`` or ``(..., K, D)``; indices: ``(..., K)`` -> ``(..., K, N)``.
    """
    op = "gather_qmv"
    d = check_qweight(op, "w", w, scales, biases, group_size, bits, mode, stacked=True)
    check_x(op, x, d)
    _x_layout(op, x, indices)
    check_like(op, "bias", bias, w.shape[:2], x.dtype)
    out = _gather_launch(op, "plain", x, [(w, scales, biases)], indices, group_size, bits, mode,
                         None if bias is None else [bias], None, verbose)  # fmt: skip
    if out is not None:
        return out
    return gather_qmv_ref(x, w, scales, biases, indices, group_size, bits, mode, bias)


def gather_qmv_swiglu(x, wg, sg, bg, wu, su, bu, indices, group_size=64, bits=4, mode="affine",
                      bias_gate=None, bias_up=None, activation="swiglu", alpha=1.702, limit=7.0,
                      *, prenorm=None, verbose=False):  # fmt: skip
    """Selected experts' gate and up projections and SwiGLU in ONE kernel.

    Args:
        x: activations, one row per token.
        wg, sg, bg, wu, su, bu: gate and up experts' weights (``E`` stacked).
        indices: selected experts per token.
        bias_gate, bias_up: optional per-expert biases ``(E, I)`` (GPT-OSS).
        activation: ``"swiglu"`` (``silu(g) * u``), ``"swiglu_oai"`` (GPT-OSS:
            ``(clip(u, -limit, limit) + 1) * min(g, limit) * sigmoid(alpha * min(g, limit))``),
            ``"geglu"`` (``gelu(g) * u``, erf) or ``"geglu_tanh"`` (``gelu_approx(g) * u``).
        prenorm: ``(residual, weight, eps)``: project ``rms_norm(x + residual, weight, eps)``
            (a decoder layer's post-attention norm, folded into the x load) instead of x.

    Shapes:
        x: ``(..., D)``; indices: ``(..., K)`` -> ``(..., K, I)``.
    """
    op = "gather_qmv_swiglu"
    if activation not in qk.GATED:
        raise ValueError(f"[{op}] expected activation in {tuple(qk.GATED)}, got {activation!r}")
    d = check_qweight(op, "wg", wg, sg, bg, group_size, bits, mode, stacked=True)
    check_qweight(op, "wu", wu, su, bu, group_size, bits, mode, stacked=True)
    if wu.shape != wg.shape:
        raise ValueError(f"[{op}] expected wu of shape {wg.shape} like wg, got {wu.shape}")
    check_x(op, x, d)
    _check_indices(op, indices, x.shape[:-1])
    if (bias_gate is None) != (bias_up is None):
        raise ValueError(f"[{op}] expected both bias_gate and bias_up, or neither")
    check_like(op, "bias_gate", bias_gate, wg.shape[:2], x.dtype)
    check_like(op, "bias_up", bias_up, wg.shape[:2], x.dtype)
    prenorm = check_prenorm(op, x, prenorm)
    lins = None if bias_gate is None else [bias_gate, bias_up]
    fp = vector((alpha, limit), mx.float32) if activation == "swiglu_oai" else None
    out = _gather_launch(op, activation, x, [(wg, sg, bg), (wu, su, bu)], indices, group_size,
                         bits, mode, lins, fp, verbose, prenorm)  # fmt: skip
    if out is not None:
        return out
    if prenorm is not None:
        return gather_qmv_swiglu(prenorm_ref(x, prenorm), wg, sg, bg, wu, su, bu, indices,
                                 group_size, bits, mode, bias_gate, bias_up, activation, alpha,
                                 limit, verbose=verbose)  # fmt: skip
    return gather_qmv_swiglu_ref(x, wg, sg, bg, wu, su, bu, indices, group_size, bits, mode,
                                 bias_gate, bias_up, activation, alpha, limit)  # fmt: skip


def gather_qmv_swiglu_oai(x, wg, sg, bg, wu, su, bu, indices, group_size=32, bits=4,
                          mode="mxfp4", bias_gate=None, bias_up=None, alpha=1.702, limit=7.0,
                          *, verbose=False):  # fmt: skip
    """:func:`gather_qmv_swiglu` with GPT-OSS's clamped activation (mxfp4 by default)."""
    return gather_qmv_swiglu(x, wg, sg, bg, wu, su, bu, indices, group_size, bits, mode,
                             bias_gate, bias_up, "swiglu_oai", alpha, limit,
                             verbose=verbose)  # fmt: skip


def gather_qmv_geglu(x, wg, sg, bg, wu, su, bu, indices, group_size=64, bits=4, mode="affine",
                     bias_gate=None, bias_up=None, approximate="none", *,
                     verbose=False):  # fmt: skip
    """:func:`gather_qmv_swiglu` with GeGLU: ``gelu(x @ Wg.T) * (x @ Wu.T)`` for the selected
    experts in one kernel; ``approximate="tanh"`` is Gemma 4's ``gelu_approx``, ``"none"`` the
    erf GELU. Shapes: ``x (..., D)``, ``indices (..., K)`` -> ``(..., K, I)``."""
    kind = gelu_kind("gather_qmv_geglu", approximate)
    return gather_qmv_swiglu(x, wg, sg, bg, wu, su, bu, indices, group_size, bits, mode,
                             bias_gate, bias_up, kind, verbose=verbose)  # fmt: skip


def gather_qmv_combine(h, w, scales, biases, indices, weights, group_size=64, bits=4,
                       mode="affine", bias=None, shared=None, shared_gate=None, *,
                       residual=None, verbose=False):  # fmt: skip
    """Down projection of the selected experts times their router weights, summed over the
    ``K`` experts, in ONE kernel, rounded as mlx-lm rounds (each expert's output to the
    activation dtype, each weighted product and the running sum to the promoted dtype).

    Args:
        h: activated expert inputs (the output of :func:`gather_qmv_swiglu`).
        w, scales, biases: down-projection experts (``E`` stacked).
        indices, weights: selected experts and their router weights.
        bias: optional per-expert bias ``(E, D)``.
        shared: optional shared-expert output ``(..., D)`` added at the end;
            shared_gate ``(..., 1)`` scales it by ``sigmoid(shared_gate)`` first.
        residual: ``(x, a)``, each ``(..., D)``: a decoder layer's residual stream
            ``x + a``, added last (as ``(x + a) + block(...)`` rounds).

    Shapes:
        h: ``(..., K, I)``; indices, weights: ``(..., K)`` -> ``(..., D)``.
    """
    op = "gather_qmv_combine"
    i_dim = check_qweight(op, "w", w, scales, biases, group_size, bits, mode, stacked=True)
    check_x(op, h, i_dim, "h")
    if h.ndim < 2:
        raise ValueError(f"[{op}] expected 'h' of shape (..., K, I), got {h.shape}")
    lead, k, dout = tuple(h.shape[:-2]), h.shape[-2], w.shape[1]
    _check_indices(op, indices, lead, k)
    check_like(op, "weights", weights, lead + (k,))
    check_like(op, "bias", bias, w.shape[:2], h.dtype)
    check_like(op, "shared", shared, lead + (dout,), h.dtype)
    if shared_gate is not None:
        if shared is None:
            raise ValueError(f"[{op}] expected 'shared' with 'shared_gate'")
        check_like(op, "shared_gate", shared_gate, lead + (1,), h.dtype)
    if residual is not None:
        if not isinstance(residual, (tuple, list)) or len(residual) != 2:
            raise TypeError(f"[{op}] expected residual = (x, a), got {type(residual).__name__}")
        for name, a in zip(("residual x", "residual a"), residual):
            check_like(op, name, a, lead + (dout,), h.dtype)
    tokens = math.prod(lead)
    if tokens and use_kernel(op, h, scales, group_size, bits, mode, tokens, verbose):
        sm = mmk.MMA_COMBINE_SPLIT
        mma = (mmk.MMA_COMBINE and backend() == "cuda"
               and mmk.covers_combine(mode, bits, group_size, h.dtype, i_dim, k, sm))  # fmt: skip
        if (not mma and k < mk.COMBINE_TWO_PASS_BELOW and i_dim <= qk.X_REG_MAX and not qk.TILE
                and qk.split_warps(i_dim, bits, group_size)):  # fmt: skip
            # Two launches (see moe_kernels.COMBINE_TWO_PASS_BELOW): each expert's rounded
            # projection (+ bias), then the exact combine with the shared expert and residual.
            y = _gather_launch(op, "plain", h, [(w, scales, biases)], indices, group_size, bits,
                               mode, None if bias is None else [bias], None, verbose)  # fmt: skip
            if y is not None:
                out = combine_launch(op, y, weights, shared, shared_gate, exact=True,
                                     residual=residual)  # fmt: skip
                if out is not None:
                    return out
        flags = (bias is not None, shared is not None, shared_gate is not None)
        split = mk.SPLIT_EXPERTS and i_dim <= qk.X_REG_MAX and k <= 32
        tmpl = [("T", h.dtype), ("P", promote((h.dtype, weights.dtype))), ("I", i_dim),
                ("D", dout), ("BITS", bits), ("GROUP_SIZE", group_size), ("K", k)]  # fmt: skip
        min_groups = 0
        if mma:
            kern = mmk.combine_kernel(*flags, residual is not None)
            nb = math.ceil(dout / mmk.ROWS)
            tmpl += [("S", sm), ("R", mmk.ROWS), ("NB", nb), ("STEPS", i_dim // (64 * sm))]
            grid, tg = qk.warp_groups(tokens * nb, k * sm)
        elif split:
            kern = mk.split_combine_kernel(mode, *flags, residual is not None,
                                           qk.SPLIT_ALL_ROWS)  # fmt: skip
            r, s = mk.split_combine_shape(i_dim, bits, group_size, k)  # K * S warps a group
            nb = math.ceil(dout / r)
            tmpl += [("R", r), ("NB", nb), ("S", s)]
            grid, tg = qk.warp_groups(tokens * nb, k * s)
            min_groups = mk.COMBINE_MIN_GROUPS
        else:
            r = qk.rows_per_warp(tokens, dout, 1, i_dim)
            nb = math.ceil(dout / r)
            batch, vec = qk.load_plan(i_dim, bits)
            kern = mk.gather_combine_kernel(mode, *flags, i_dim <= qk.X_REG_MAX,
                                            has_res=residual is not None, batch=batch,
                                            vec=vec)  # fmt: skip
            tmpl += [("R", r), ("NB", nb)]
            grid, tg = qk.launch_shape(tokens * nb)
        ins = [h] + weight_inputs([(w, scales, biases)], mode) + [indices, weights]
        ins += [a for a in (bias, shared, shared_gate) if a is not None]
        ins += list(residual or ())
        return kern(*ins, scalar(tokens, mx.int32), output_shapes=[lead + (dout,)],
                    output_dtypes=[h.dtype], grid=grid, threadgroup=tg, template=tmpl,
                    min_groups=min_groups)[0]  # fmt: skip
    out = gather_qmv_combine_ref(h, w, scales, biases, indices, weights, group_size, bits, mode,
                                 bias, shared, shared_gate)  # fmt: skip
    return out if residual is None else (residual[0] + residual[1]) + out


def moe_experts(x, wg, sg, bg, wu, su, bu, wd, sd, bd, indices, weights, group_size=64, bits=4,
                mode="affine", *, bias_gate=None, bias_up=None, bias=None, activation="swiglu",
                alpha=1.702, limit=7.0, shared=None, shared_gate=None, residual=None,
                down_format=None, verbose=False):  # fmt: skip
    """One MoE block's routed experts: :func:`gather_qmv_swiglu` then
    :func:`gather_qmv_combine` (arguments as theirs; ``down_format``: the down projection's
    ``dict(group_size=, bits=, mode=)`` where it differs from gate/up's). On CUDA, with
    :data:`.fused_experts.FUSED_EXPERTS` on (off by default: slower), both run in ONE launch
    where :func:`.fused_experts.fused_experts_kernel` covers the call (bit-identical to the
    two kernels). Shapes: ``x (..., D)``, ``indices, weights (..., K)``
    -> ``(..., D)``."""
    dfmt = {"group_size": group_size, "bits": bits, "mode": mode, **(down_format or {})}
    out = _fused_experts(x, (wg, sg, bg), (wu, su, bu), (wd, sd, bd), indices, weights,
                         (group_size, bits, mode), dfmt, bias_gate, bias_up, bias, activation,
                         alpha, limit, shared, shared_gate, residual, verbose)  # fmt: skip
    if out is not None:
        return out
    h = gather_qmv_swiglu(x, wg, sg, bg, wu, su, bu, indices, group_size, bits, mode, bias_gate,
                          bias_up, activation, alpha, limit, verbose=verbose)  # fmt: skip
    return gather_qmv_combine(h, wd, sd, bd, indices, weights, bias=bias, shared=shared,
                              shared_gate=shared_gate, residual=residual, verbose=verbose,
                              **dfmt)  # fmt: skip


def _fused_experts(x, g, u, dn, indices, weights, fmt, dfmt, bias_gate, bias_up, bias,
                   activation, alpha, limit, shared, shared_gate, residual, verbose):  # fmt: skip
    """The one-launch experts (:mod:`.fused_experts`), or None: not CUDA, a shape the two
    kernels would not both take with groups of the same size, or any argument the two ops
    would refuse (they then raise their own errors)."""
    op = "moe_experts"
    gs, bits, mode = fmt
    dgs, dbits, dmode = dfmt["group_size"], dfmt["bits"], dfmt["mode"]
    if not fe.FUSED_EXPERTS or backend() != "cuda" or not (qk.SPLIT_ALL_ROWS and mk.SPLIT_EXPERTS):
        return None
    if activation not in qk.GATED or qk.TILE or (bias_gate is None) != (bias_up is None):
        return None
    try:
        d = check_qweight(op, "wg", *g, gs, bits, mode, stacked=True)
        check_qweight(op, "wu", *u, gs, bits, mode, stacked=True)
        i_dim = check_qweight(op, "wd", *dn, dgs, dbits, dmode, stacked=True)
        check_x(op, x, d)
        lead, k, n, dout = tuple(x.shape[:-1]), indices.shape[-1], g[0].shape[1], dn[0].shape[1]
        _check_indices(op, indices, lead, k)
        check_like(op, "weights", weights, lead + (k,))
        for name, a, shape in (("bias_gate", bias_gate, g[0].shape[:2]),
                               ("bias_up", bias_up, g[0].shape[:2]),
                               ("bias", bias, dn[0].shape[:2]), ("shared", shared, lead + (dout,)),
                               ("shared_gate", shared_gate, lead + (1,))):  # fmt: skip
            check_like(op, name, a, shape, x.dtype)
        for a in residual or ():
            check_like(op, "residual", a, lead + (dout,), x.dtype)
    except (TypeError, ValueError):
        return None
    tokens = math.prod(lead)
    if (u[0].shape != g[0].shape or i_dim != n or dn[0].shape[0] != g[0].shape[0] or tokens == 0
            or (shared_gate is not None and shared is None)
            or (residual is not None and (not isinstance(residual, (tuple, list))
                                          or len(residual) != 2))):  # fmt: skip
        return None
    if not (use_kernel(op, x, g[1], gs, bits, mode, tokens, verbose)
            and use_kernel(op, x, dn[1], dgs, dbits, dmode, tokens, verbose)):  # fmt: skip
        return None
    split = qk.split_warps(d, bits, gs) if d <= qk.X_REG_MAX else 0
    mw = mmk.group_warps(d)
    mma = qk.MMA_GATE_UP and mmk.covers(activation, mode, bits, gs, x.dtype, d, mw,
                                        bias_gate is not None, False)  # fmt: skip
    two_pass = k < mk.COMBINE_TWO_PASS_BELOW and qk.split_warps(i_dim, dbits, dgs)
    mma = mma or (mmk.MMA_COMBINE and mmk.covers_combine(dmode, dbits, dgs, x.dtype, i_dim, k,
                                                         mmk.MMA_COMBINE_SPLIT))  # fmt: skip
    if not split or mma or two_pass or i_dim > qk.X_REG_MAX or k > 32:
        return None
    cr, s = mk.split_combine_shape(i_dim, dbits, dgs, k)
    if k * s != split:
        return None
    r = qk.SPLIT_ROWS
    nb, cnb = math.ceil(n / r), math.ceil(dout / cr)
    kern = fe.fused_experts_kernel(activation, mode, dmode, False, bias_gate is not None,
                                   bias is not None, shared is not None,
                                   shared_gate is not None, residual is not None,
                                   fe.FUSED_PREFETCH, fe.FUSED_ORDER)  # fmt: skip
    ins = [x] + weight_inputs([g, u], mode) + [indices]
    ins += [] if bias_gate is None else [bias_gate, bias_up]
    ins += [vector((alpha, limit), mx.float32)] if activation == "swiglu_oai" else []
    ins += weight_inputs([dn], dmode) + [weights]
    ins += [a for a in (bias, shared, shared_gate) if a is not None] + list(residual or ())
    ins += [fe.counters(), scalar(tokens, mx.int32)]
    tmpl = [("T", x.dtype), ("P", promote((x.dtype, weights.dtype))), ("K", k), ("G_D", d),
            ("G_N", n), ("G_BITS", bits), ("G_GROUP_SIZE", gs), ("G_R", r), ("G_NB", nb),
            ("G_W", split), ("C_I", i_dim), ("C_D", dout), ("C_BITS", dbits),
            ("C_GROUP_SIZE", dgs), ("C_R", cr), ("C_NB", cnb), ("C_S", s)]  # fmt: skip
    grid, tg = qk.warp_groups(tokens * (k * nb + cnb), split)
    return kern(*ins, output_shapes=[lead + (k, n), lead + (dout,)],
                output_dtypes=[x.dtype, x.dtype], grid=grid, threadgroup=tg, template=tmpl,
                verbose=verbose)[1]  # fmt: skip


def moe_experts_ref(x, wg, sg, bg, wu, su, bu, wd, sd, bd, indices, weights, group_size=64,
                    bits=4, mode="affine"):  # fmt: skip
    """Stock mlx-lm: ``SwitchGLU`` (three ``gather_qmm``, SwiGLU) then the block's combine."""
    h = gather_qmv_swiglu_ref(x, wg, sg, bg, wu, su, bu, indices, group_size, bits, mode)
    y = _gather(h, wd, sd, bd, indices, group_size, bits, mode)
    return moe_combine_exact_ref(y, weights)


__all__ = [
    "gather_qmv",
    "gather_qmv_combine",
    "gather_qmv_combine_ref",
    "gather_qmv_geglu",
    "gather_qmv_geglu_ref",
    "gather_qmv_ref",
    "gather_qmv_swiglu",
    "gather_qmv_swiglu_oai",
    "gather_qmv_swiglu_oai_ref",
    "gather_qmv_swiglu_ref",
    "moe_combine",
    "moe_combine_exact",
    "moe_combine_exact_ref",
    "moe_combine_ref",
    "moe_combine_shared",
    "moe_combine_shared_ref",
    "moe_experts",
    "moe_experts_ref",
    "swiglu_oai_ref",
]

# Registers the catalog entries (kept apart to keep this file short).
from . import moe_specs as _specs  # noqa: E402,F401
