"""The weighted combine over a MoE block's experts, and checks shared with :mod:`.moe`.

Every MoE block in mlx-lm ends with ``(y * scores[..., None]).sum(axis=-2)``: one kernel here,
with float32 accumulation (:func:`moe_combine`), rounded exactly as that expression
(:func:`moe_combine_exact`), or plus a shared expert (:func:`moe_combine_shared`). Kernel
bodies are in :mod:`.moe_kernels`.
"""

from __future__ import annotations

import math

import mlx.core as mx

from ..core.backend import backend
from ..core.dtypes import check_float, dtype_name, promote
from ..core.kernel import grid_1d, scalar
from . import moe_kernels as mk

# ---------------------------------------------------------------------------------------
# References


def moe_combine_ref(y, weights):
    """Weighted sum over experts with float32 accumulation. Shapes: ``(..., K, D) -> (..., D)``."""
    w = weights.astype(mx.float32)[..., None]
    return (y.astype(mx.float32) * w).sum(axis=-2).astype(y.dtype)


def moe_combine_exact_ref(y, weights):
    """mlx-lm's expression itself: ``(y * weights[..., None]).sum(axis=-2).astype(y.dtype)``."""
    return (y * weights[..., None]).sum(axis=-2).astype(y.dtype)


def shared_add(out, shared, shared_gate):
    """``out + shared`` or ``out + sigmoid(shared_gate) * shared`` (None: ``out``)."""
    if shared is None:
        return out
    return out + (shared if shared_gate is None else mx.sigmoid(shared_gate) * shared)


def moe_combine_shared_ref(y, weights, shared, shared_gate=None):
    """Combine plus a shared expert: ``+ shared`` (GLM-4, DeepSeek) or
    ``+ sigmoid(shared_gate) * shared`` (Qwen3-Next). Shapes: ``shared_gate (..., 1)``."""
    return shared_add(moe_combine_ref(y, weights), shared, shared_gate)


# ---------------------------------------------------------------------------------------
# Checks


def check_like(op, name, a, shape, dtype=None):
    """Raise unless ``a`` is None or a float array of ``shape`` (and ``dtype`` if given)."""
    if a is None:
        return
    if not isinstance(a, mx.array) or tuple(a.shape) != tuple(shape):
        got = tuple(a.shape) if isinstance(a, mx.array) else type(a).__name__
        raise ValueError(f"[{op}] expected '{name}' of shape {tuple(shape)}, got {got}")
    check_float(op, name, a)
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"[{op}] expected '{name}' in {dtype_name(dtype)}, got {a.dtype}")


# ---------------------------------------------------------------------------------------
# Weighted combine over experts


def combine_launch(op, y, weights, shared=None, shared_gate=None, exact=False, residual=None):
    """The combine kernel's output, or None where the reference path runs (CPU, no rows).
    ``residual``: ``(x, a)``, added last (checked by the caller)."""
    if not isinstance(y, mx.array) or y.ndim < 2:
        raise ValueError(f"[{op}] expected 'y' of shape (..., K, D), got {getattr(y, 'shape', y)}")
    check_float(op, "y", y)
    lead, k, d = tuple(y.shape[:-2]), y.shape[-2], y.shape[-1]
    check_like(op, "weights", weights, lead + (k,))
    check_like(op, "shared", shared, lead + (d,), y.dtype)
    check_like(op, "shared_gate", shared_gate, lead + (1,), y.dtype)
    tokens = math.prod(lead)
    if backend() == "cpu" or tokens * d == 0:
        return None
    ins = [y, weights] + [a for a in (shared, shared_gate) if a is not None]
    ins += list(residual or ())
    tmpl = [("T", y.dtype), ("K", k), ("D", d)]
    if exact:
        tmpl.append(("P", promote((y.dtype, weights.dtype))))
    grid, tg = grid_1d(tokens * d, 256)
    kern = mk.combine_kernel(exact, shared is not None, shared_gate is not None,
                             residual is not None)  # fmt: skip
    return kern(*ins, scalar(tokens, mx.int32), output_shapes=[lead + (d,)],
                output_dtypes=[y.dtype], grid=grid, threadgroup=tg, template=tmpl)[0]  # fmt: skip


def moe_combine(y, weights):
    """Weighted sum of the experts' outputs with float32 accumulation.

    Shapes:
        y: ``(..., K, D)``; weights: ``(..., K)`` -> ``(..., D)`` in y's dtype.
    """
    out = combine_launch("moe_combine", y, weights)
    return moe_combine_ref(y, weights) if out is None else out


def moe_combine_exact(y, weights):
    """mlx-lm's ``(y * weights[..., None]).sum(axis=-2).astype(y.dtype)``, bit for bit.

    The product dtype follows MLX's promotion: Qwen3-MoE's bf16 scores keep bf16 products
    and a bf16 running sum; GLM-4/DeepSeek's float32 scores give float32 products and sum,
    cast to y's dtype at the end.

    Shapes:
        y: ``(..., K, D)``; weights: ``(..., K)`` -> ``(..., D)``.
    """
    out = combine_launch("moe_combine_exact", y, weights, exact=True)
    return moe_combine_exact_ref(y, weights) if out is None else out


def moe_combine_shared(y, weights, shared, shared_gate=None):
    """:func:`moe_combine` plus the shared expert's output in the same kernel.

    Shapes:
        y: ``(..., K, D)``; weights: ``(..., K)``; shared: ``(..., D)``;
        shared_gate: ``(..., 1)`` (Qwen3-Next's gate logit) -> ``(..., D)``.
    """
    if shared is None:
        raise ValueError("[moe_combine_shared] expected a 'shared' array, got None")
    out = combine_launch("moe_combine_shared", y, weights, shared, shared_gate)
    return moe_combine_shared_ref(y, weights, shared, shared_gate) if out is None else out
