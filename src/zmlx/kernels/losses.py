"""Losses over the last axis: fused softmax cross-entropy, KL divergence, z-loss.

``softmax_cross_entropy`` never materialises the softmax: the forward kernel runs an online
max/sum over each row (any vocabulary size; one group of up to 1024 threads per row), picks
the target logit and writes the loss and the row's logsumexp (float32). The backward kernel
writes ``g * (softmax - onehot)`` in one pass from the saved logsumexp, over chunks of 1024
columns so that a few long rows still fill the GPU. Losses are float32, as in
``mx.fast.cross_entropy``.
"""

from __future__ import annotations

import math

import mlx.core as mx

from ..authoring.rows import reduce
from ..core.backend import backend
from ..core.dtypes import check_float, dtype_name
from ..core.kernel import Kernel, dims
from ._common import vector
from ._rowkit import RowKernel, rows_of, strided
from .softmax import logsumexp_f32

_REDUCTIONS = ("none", "mean", "sum")

# ---------------------------------------------------------------------------------------
# References


def softmax_cross_entropy_ref(
    logits: mx.array,
    targets: mx.array,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> mx.array:
    """Per-row cross-entropy in float32 (0 where ``targets == ignore_index``).

    ``logsumexp(z) - (1 - eps) * z[t] - eps * mean(z)``, the label-smoothed form of
    ``mlx.nn.losses.cross_entropy``.

    Shapes:
        logits: ``(..., V)``; targets: ``(...)`` -> ``(...)``.
    """
    z = logits.astype(mx.float32)
    valid = targets != ignore_index
    t = mx.where(valid, targets, 0).astype(mx.int32)
    zt = mx.take_along_axis(z, t[..., None], axis=-1)[..., 0]
    loss = mx.logsumexp(z, axis=-1) - (1.0 - label_smoothing) * zt
    if isinstance(label_smoothing, mx.array) or label_smoothing:
        loss = loss - label_smoothing * mx.mean(z, axis=-1)
    return mx.where(valid, loss, 0.0)


def kl_divergence_ref(logp: mx.array, logq: mx.array) -> mx.array:
    """``KL(P || Q) = sum exp(logp) * (logp - logq)`` per row (0 where ``logp == -inf``).

    Shapes:
        logp, logq: ``(..., D)`` -> ``(...)``.
    """
    p = logp.astype(mx.float32)
    q = logq.astype(mx.float32)
    terms = mx.where(p == -math.inf, 0.0, mx.exp(p) * (p - q))
    return mx.sum(terms, axis=-1).astype(logp.dtype)


def z_loss_ref(logits: mx.array) -> mx.array:
    """``mean(logsumexp(logits) ** 2)`` over rows, in float32. Shapes: ``(..., V)`` -> ``()``."""
    return mx.mean(mx.square(mx.logsumexp(logits.astype(mx.float32), axis=-1)))


# ---------------------------------------------------------------------------------------
# Cross-entropy kernels. p = (label_smoothing, ignore_index); targets, g: (rows,) any strides.

_CE_FWD = RowKernel(
    "cross_entropy",
    ("x", "t", "p"),
    ("loss", "lse"),
    strided("x")
    + """  ZxLse st = zx_lse(ZX_NEG_INF, 0.0f);
  float sx = 0.0f;
  for (uint j = r_lid; j < D; j += r_step) {
    const float v = static_cast<float>(x[x_b + j * x_s]);
    st = zx_lse_push(st, v);
    sx += v;
  }
  st = zx_row_lse(st, zx_buf, zx_buf2, r_lid, r_step);
  const float tot = zx_row_sum(sx, zx_buf, r_lid, r_step);
  if (r_lid == 0u) {
    const float eps = p[0];
    const long ti = static_cast<long>(t[(long)row * ZX_STRIDES(t)[0]]);
    const float lse_r = st.m + zx_log(st.s);
    float out = 0.0f;
    if (ti != static_cast<long>(p[1])) {
      out = (ZX_INF - ZX_INF);  // a target outside [0, D) gives NaN, not a stray read
      if (ti >= 0 && ti < (long)D) {
        const float xt = static_cast<float>(x[x_b + ti * x_s]);
        out = lse_r - (1.0f - eps) * xt - eps * (tot / (float)D);
      }
    }
    loss[row] = out;
    lse[row] = lse_r;
  }
""",
    modes=("block",),
)

_CHUNK = 1024  # columns per group in the backward: 256 threads x 4
_CE_BWD = Kernel(
    "cross_entropy_vjp",
    ["x", "t", "lse", "g", "p", "zx_dims"],
    ["dx"],
    """  const uint D = zx_dims[1];
  const uint nch = (D + 1023u) / 1024u;
  const uint row = gid / nch;
  if (row >= zx_dims[0]) { return; }
  const uint c0 = (gid - row * nch) * 1024u;
"""
    + strided("x")
    + """  const long ti = static_cast<long>(t[(long)row * ZX_STRIDES(t)[0]]);
  const bool skip = ti == static_cast<long>(p[1]);
  const float gr = static_cast<float>(g[(long)row * ZX_STRIDES(g)[0]]);
  const float l = lse[row];
  const float on = 1.0f - p[0];
  const float off = p[0] / (float)D;
  const long o_b = (long)row * (long)D;
  for (uint k = 0; k < 4u; ++k) {
    const uint j = c0 + k * lsize + lid;
    if (j < D) {
      const float pj = zx_exp(static_cast<float>(x[x_b + j * x_s]) - l);
      const float d = skip ? 0.0f : gr * (pj - ((long)j == ti ? on : 0.0f) - off);
      dx[o_b + j] = static_cast<O>(d);
    }
  }
""",
    ensure_row_contiguous=False,
)


def _ce_params(label_smoothing: float, ignore_index: int) -> mx.array:
    return vector((float(label_smoothing), float(ignore_index)), mx.float32)


@mx.custom_function
def _ce(x, t, params):
    b = backend()
    if b == "cpu":
        # The parameters stay arrays here (no host sync, and mx.compile can trace it).
        loss = softmax_cross_entropy_ref(x, t.reshape(x.shape[:-1]), params[1], params[0])
        return loss.reshape(-1), mx.zeros((1,), mx.float32)
    rows = rows_of(x)
    return tuple(
        _CE_FWD(
            x,
            t,
            params,
            rows=rows,
            d=x.shape[-1],
            output_shapes=[(rows,), (rows,)],
            output_dtypes=[mx.float32, mx.float32],
            backend_name=b,
        )
    )


@_ce.vjp
def _ce_vjp(primals, cotangents, outputs):
    x, t, params = primals
    g = cotangents[0]
    zeros = (mx.zeros_like(t), mx.zeros_like(params))
    if backend() == "cpu":

        def f(a):
            ref = softmax_cross_entropy_ref(a, t.reshape(a.shape[:-1]), params[1], params[0])
            return ref.reshape(-1)

        _, (dx,) = mx.vjp(f, [x], [g])
        return (dx,) + zeros
    rows, d = rows_of(x), x.shape[-1]
    nch = -(-d // _CHUNK)
    (dx,) = _CE_BWD(
        x,
        t,
        outputs[1],
        g,
        params,
        dims(rows, d),
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
        grid=(rows * nch * 256, 1, 1),
        threadgroup=(256, 1, 1),
        template=[("O", x.dtype)],
    )
    return (dx,) + zeros


def _check_logits(op: str, name: str, x) -> None:
    if not isinstance(x, mx.array):
        raise TypeError(f"[{op}] expected '{name}' to be an mlx array, got {type(x).__name__}")
    check_float(op, name, x)
    if x.ndim == 0:
        raise ValueError(f"[{op}] expected '{name}' with at least one axis, got a 0-d array")


def _reduce(loss: mx.array, reduction: str, count=None) -> mx.array:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if count is None:
        return loss.mean()
    return loss.sum() / mx.maximum(count, 1).astype(mx.float32)


def softmax_cross_entropy(
    logits: mx.array,
    targets: mx.array,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "none",
) -> mx.array:
    """Cross-entropy of ``softmax(logits)`` against class indices, fused and differentiable.

    Args:
        logits: unnormalised scores over the last axis (the vocabulary).
        targets: integer class indices in ``[0, V)``. Rows whose target equals
            ``ignore_index`` get loss 0 and zero gradient. Other targets outside ``[0, V)``
            give NaN on the kernel path.
        ignore_index: the target value to skip (PyTorch's ``-100`` by default).
        label_smoothing: ``eps`` in ``(1 - eps) * onehot + eps / V`` (as
            ``mlx.nn.losses.cross_entropy``).
        reduction: ``"none"`` (per row), ``"sum"``, or ``"mean"`` over the rows that are not
            ignored (0 when every row is ignored).

    Returns:
        The loss in float32.

    Shapes:
        logits: ``(..., V)``; targets: ``(...)`` -> ``(...)`` (``()`` when reduced).
    """
    op = "softmax_cross_entropy"
    _check_logits(op, "logits", logits)
    if not isinstance(targets, mx.array) or not mx.issubdtype(targets.dtype, mx.integer):
        got = dtype_name(targets.dtype) if isinstance(targets, mx.array) else type(targets).__name__
        raise TypeError(f"[{op}] expected integer 'targets', got {got}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"[{op}] expected 'targets' of shape {tuple(logits.shape[:-1])}, got "
            f"{tuple(targets.shape)}"
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"[{op}] expected reduction in {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"[{op}] expected label_smoothing in [0, 1), got {label_smoothing}")
    if logits.size == 0:
        loss = mx.zeros(targets.shape, mx.float32)
    else:
        rows = rows_of(logits)
        params = _ce_params(label_smoothing, ignore_index)
        loss, _ = _ce(logits, targets.reshape(rows), params)
        loss = loss.reshape(targets.shape)
    count = (targets != ignore_index).sum() if reduction == "mean" else None
    return _reduce(loss, reduction, count)


_KL = reduce(
    "sum",
    map="where(p == -inf, 0, exp(p) * (p - q))",
    inputs=("p", "q"),
    name="kl_divergence",
)


def kl_divergence(logp: mx.array, logq: mx.array) -> mx.array:
    """``KL(P || Q) = sum_j exp(logp_j) * (logp_j - logq_j)`` over the last axis.

    Both inputs are log-probabilities (for example ``log_softmax`` outputs); columns where
    ``logp == -inf`` contribute 0. ``mlx.nn.losses.kl_div_loss(logq, logp)`` is the same
    quantity (its first argument is the approximating distribution).

    Shapes:
        logp, logq: ``(..., D)`` -> ``(...)``.
    """
    op = "kl_divergence"
    _check_logits(op, "logp", logp)
    _check_logits(op, "logq", logq)
    if logp.shape != logq.shape:
        raise ValueError(
            f"[{op}] expected 'logq' of shape {tuple(logp.shape)}, got {tuple(logq.shape)}"
        )
    return _KL(logp, logq)


def z_loss(logits: mx.array, *, reduction: str = "mean") -> mx.array:
    """The auxiliary z-loss ``logsumexp(logits) ** 2`` per row (PaLM, Chowdhery et al. 2022).

    This is the squared log-normaliser without the small coefficient (PaLM uses 1e-4):
    multiply by it yourself. The logsumexp is one fused kernel; its gradient is
    ``2 * lse * softmax``.

    Args:
        logits: unnormalised scores over the last axis.
        reduction: ``"mean"`` (default) or ``"sum"`` over rows, or ``"none"``.

    Returns:
        float32 loss.

    Shapes:
        logits: ``(..., V)`` -> ``()`` (``(...)`` with ``reduction="none"``).
    """
    _check_logits("z_loss", "logits", logits)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"[z_loss] expected reduction in {_REDUCTIONS}, got {reduction!r}")
    return _reduce(mx.square(logsumexp_f32(logits)), reduction)


# Registers the catalog entries (kept apart to keep this file short).
from . import losses_specs as _specs  # noqa: E402,F401
