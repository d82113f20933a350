"""Test helpers shared by zmlx's own tests and by users testing their kernels.

* :func:`assert_close` compares arrays and reports shape, dtype, how many elements differ,
  the first few indices with their values, and NaN/Inf mismatches.
* :func:`check_grad` compares the VJP of an op with the VJP of its reference.
* :data:`TOLERANCES` are the default ``(atol, rtol)`` per dtype.
* :func:`expected_path` says which path an op should report on this machine.
* :func:`marker_skip_reason` backs the ``gpu``/``cuda``/``metal`` pytest markers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mlx.core as mx
import numpy as np

from .core.backend import backend, gpu_backend

TOLERANCES: dict[mx.Dtype, tuple[float, float]] = {
    mx.float32: (1e-5, 1e-4),
    mx.float16: (2e-3, 4e-3),
    mx.bfloat16: (1.6e-2, 1.6e-2),
}


def tolerance(dtype: mx.Dtype, scale: float = 1.0) -> tuple[float, float]:
    atol, rtol = TOLERANCES.get(dtype, TOLERANCES[mx.float32])
    return atol * scale, rtol * scale


def to_numpy(x) -> np.ndarray:
    """Any array-like to float64 numpy (bfloat16 goes through float32)."""
    if isinstance(x, mx.array):
        if x.dtype in (mx.bfloat16, mx.float16):
            x = x.astype(mx.float32)
        return np.array(x, dtype=np.float64) if x.dtype != mx.bool_ else np.array(x)
    return np.asarray(x, dtype=np.float64)


def assert_close(
    actual,
    expected,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    dtype: mx.Dtype | None = None,
    check_dtype: bool = True,
    name: str = "",
    max_report: int = 5,
) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise.

    Args:
        actual: the array under test (its dtype is checked against ``expected``'s when both
            are mlx arrays and ``check_dtype``).
        expected: the reference.
        atol, rtol: tolerances; default from :data:`TOLERANCES` for ``dtype`` (or actual's).
        dtype: dtype whose default tolerances apply.
        check_dtype: require equal dtypes.
        name: label for the message.
        max_report: how many mismatching indices to list.
    """
    label = f"[{name}] " if name else ""
    if isinstance(actual, mx.array) and isinstance(expected, mx.array):
        if check_dtype and actual.dtype != expected.dtype:
            raise AssertionError(
                f"{label}dtype mismatch: got {actual.dtype}, expected {expected.dtype}"
            )
    tol_dtype = dtype or (actual.dtype if isinstance(actual, mx.array) else mx.float32)
    d_atol, d_rtol = tolerance(tol_dtype)
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    a, e = to_numpy(actual), to_numpy(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{label}shape mismatch: got {a.shape}, expected {e.shape}")
    problems = []
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if (nan_a != nan_e).any():
        idx = np.argwhere(nan_a != nan_e)[:max_report].tolist()
        problems.append(f"NaN mismatch at {int((nan_a != nan_e).sum())} element(s), first {idx}")
    inf_a, inf_e = np.isinf(a), np.isinf(e)
    inf_bad = (inf_a != inf_e) | (inf_a & inf_e & (np.sign(a) != np.sign(e)))
    if inf_bad.any():
        idx = np.argwhere(inf_bad)[:max_report].tolist()
        problems.append(f"Inf mismatch at {int(inf_bad.sum())} element(s), first {idx}")
    finite = np.isfinite(a) & np.isfinite(e)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where both are inf
        err = np.where(finite, np.abs(a - e), 0.0)
    bad = finite & (err > atol + rtol * np.abs(e))
    if bad.any():
        idx = np.argwhere(bad)[:max_report]
        pairs = ", ".join(
            f"{tuple(int(v) for v in i)}: {a[tuple(i)]:.6g} vs {e[tuple(i)]:.6g}" for i in idx
        )
        rel = err / np.maximum(np.abs(e), 1e-30)
        problems.append(
            f"{int(bad.sum())}/{a.size} element(s) differ beyond atol={atol:g} rtol={rtol:g} "
            f"(max abs err {err.max():.3g}, max rel err {rel[finite].max():.3g}); first: {pairs}"
        )
    if problems:
        raise AssertionError(f"{label}shape {a.shape}: " + "; ".join(problems))


def random_cotangent(shape, dtype, seed: int = 1234) -> mx.array:
    return mx.random.normal(tuple(shape), key=mx.random.key(seed)).astype(dtype)


def check_grad(
    op: Callable[..., mx.array],
    reference: Callable[..., mx.array],
    inputs: Sequence[mx.array],
    *,
    argnums: Sequence[int] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    name: str = "",
) -> None:
    """Compare the VJP of ``op`` with the VJP of ``reference`` at ``inputs``.

    A random cotangent is drawn (the same for both), so every output element matters.
    """
    argnums = list(range(len(inputs))) if argnums is None else list(argnums)
    out = op(*inputs)
    outs = out if isinstance(out, (tuple, list)) else [out]
    cots = [random_cotangent(o.shape, o.dtype, 99 + i) for i, o in enumerate(outs)]

    def scalarize(f):
        def g(*diff):
            args = list(inputs)
            for i, v in zip(argnums, diff):
                args[i] = v
            r = f(*args)
            rs = r if isinstance(r, (tuple, list)) else [r]
            return sum(
                (x.astype(mx.float32) * c.astype(mx.float32)).sum() for x, c in zip(rs, cots)
            )

        return g

    diff_inputs = [inputs[i] for i in argnums]
    got = mx.grad(scalarize(op), argnums=list(range(len(argnums))))(*diff_inputs)
    want = mx.grad(scalarize(reference), argnums=list(range(len(argnums))))(*diff_inputs)
    got = got if isinstance(got, (tuple, list)) else [got]
    want = want if isinstance(want, (tuple, list)) else [want]
    for i, g, w in zip(argnums, got, want):
        assert_close(
            g,
            w,
            atol=atol,
            rtol=rtol,
            check_dtype=False,
            dtype=inputs[i].dtype,
            name=f"{name} grad[{i}]",
        )


def expected_path() -> str:
    """``"reference"`` on the CPU, else the GPU backend name: what ops should report."""
    b = backend()
    return "reference" if b == "cpu" else b


def marker_skip_reason(marker: str) -> str | None:
    """Why a test with ``marker`` (``gpu``, ``cuda`` or ``metal``) cannot run here, or None."""
    gpu = gpu_backend()
    if marker == "gpu" and gpu == "cpu":
        return "needs a GPU backend (CUDA or Metal)"
    if marker in ("cuda", "metal") and gpu != marker:
        return f"needs MLX's {marker.upper() if marker == 'cuda' else 'Metal'} backend"
    return None
