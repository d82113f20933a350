"""Fused optimizer steps: AdamW and Lion, one kernel per parameter update.

MLX's optimizers call ``apply_single(gradient, parameter, state)`` once per parameter (from
``Optimizer.apply_gradients``, after it bumps ``state["step"]`` and updates scheduled
values), and each call there is about ten elementwise ops. :class:`FusedAdamW` and
:class:`FusedLion` subclass ``mlx.optimizers.AdamW`` / ``Lion`` and override only
``apply_single``: one kernel reads the parameter, gradient and states once and writes the new
parameter and states. Everything else (state layout, ``init``, schedules, ``step``, saving and
loading state) is MLX's.

Hyper-parameters reach the kernel as a small float32 array computed with MLX ops once per
step and dtype, exactly as MLX computes them (the learning rate cast to the gradient dtype,
``1 - lr * weight_decay`` and the bias corrections rounded as MLX rounds them), so a learning
rate schedule never rebuilds a kernel. The per-element math runs in float32 and rounds once
per output, where MLX rounds after every op in the parameter dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import mlx.optimizers as optim

from ..core.backend import backend
from ..core.kernel import Kernel, scalar
from ._common import VEC, vec_grid, vec_loop
from .catalog import KernelSpec, register

# hyper: [lr, 1 - lr * wd, b1, b2, eps, c1, c2]; the update is p * wdf - c1 * m / (sqrt(v) * c2
# + eps), with c1 = lr and c2 = 1 when there is no bias correction.
_ADAMW = """
      const float g = static_cast<float>(grad[i]);
      const float b1 = hp[2], b2 = hp[3];
      const float m = b1 * static_cast<float>(m0[i]) + (1.0f - b1) * g;
      const float v = b2 * static_cast<float>(v0[i]) + (1.0f - b2) * g * g;
      const float den = zx_sqrt(v) * hp[6] + hp[4];
      p1[i] = static_cast<P>(static_cast<float>(p0[i]) * hp[1] - hp[5] * m / den);
      m1[i] = static_cast<S>(m);
      v1[i] = static_cast<S>(v);"""

# hyper: [lr, 1 - lr * wd, b1, b2]
_LION = """
      const float g = static_cast<float>(grad[i]);
      const float m = static_cast<float>(m0[i]);
      const float c = hp[2] * m + (1.0f - hp[2]) * g;
      p1[i] = static_cast<P>(static_cast<float>(p0[i]) * hp[1] - hp[0] * zx_sign(c));
      m1[i] = static_cast<S>(hp[3] * m + (1.0f - hp[3]) * g);"""

ADAMW_KERNEL = Kernel(
    "adamw_step",
    ["p0", "grad", "m0", "v0", "hp", "zx_n"],
    ["p1", "m1", "v1"],
    vec_loop(_ADAMW),
)
LION_KERNEL = Kernel("lion_step", ["p0", "grad", "m0", "hp", "zx_n"], ["p1", "m1"], vec_loop(_LION))


def adamw_hyper(lr, betas, eps, weight_decay, step, dtype) -> mx.array:
    """``[lr, 1 - lr * wd, b1, b2, eps, c1, c2]`` (float32), rounded as MLX's AdamW rounds them
    for gradients of ``dtype``; ``step=None`` means no bias correction."""
    lr = mx.array(lr).astype(dtype)
    wdf = 1 - lr * weight_decay
    b1, b2 = betas
    if step is None:
        c1, c2 = lr, mx.array(1.0)
    else:
        c1 = (lr / (1 - b1**step)).astype(dtype)
        c2 = mx.rsqrt(1 - b2**step).astype(dtype)
    parts = [lr, wdf, mx.array(b1), mx.array(b2), mx.array(eps), c1, c2]
    return mx.stack([mx.array(a).astype(mx.float32).reshape(()) for a in parts])


def lion_hyper(lr, betas, weight_decay, dtype) -> mx.array:
    """``[lr, 1 - lr * wd, b1, b2]`` (float32), rounded as MLX's Lion rounds them."""
    lr = mx.array(lr).astype(dtype)
    wdf = (1 - lr * weight_decay) if weight_decay > 0 else mx.array(1.0)
    parts = [lr, wdf, mx.array(betas[0]), mx.array(betas[1])]
    return mx.stack([mx.array(a).astype(mx.float32).reshape(()) for a in parts])


def adamw_step_ref(param, grad, m, v, hyper):
    """The fused AdamW update in MLX ops (float32 math). Returns ``(param, m, v)``.

    Shapes:
        param, grad, m, v: any (all the same); hyper: ``(7,)`` -> three arrays of that shape.
    """
    lr, wdf, b1, b2, eps, c1, c2 = (hyper[i] for i in range(7))
    g = grad.astype(mx.float32)
    m1 = b1 * m.astype(mx.float32) + (1 - b1) * g
    v1 = b2 * v.astype(mx.float32) + (1 - b2) * g * g
    p1 = param.astype(mx.float32) * wdf - c1 * m1 / (mx.sqrt(v1) * c2 + eps)
    return p1.astype(param.dtype), m1.astype(m.dtype), v1.astype(v.dtype)


def lion_step_ref(param, grad, m, hyper):
    """The fused Lion update in MLX ops (float32 math). Returns ``(param, m)``.

    Shapes:
        param, grad, m: any (all the same); hyper: ``(4,)`` -> two arrays of that shape.
    """
    lr, wdf, b1, b2 = (hyper[i] for i in range(4))
    g, m32 = grad.astype(mx.float32), m.astype(mx.float32)
    c = b1 * m32 + (1 - b1) * g
    p1 = param.astype(mx.float32) * wdf - lr * mx.sign(c)
    return p1.astype(param.dtype), (b2 * m32 + (1 - b2) * g).astype(m.dtype)


def _check(op: str, arrays: Sequence[tuple[str, mx.array]], hyper: mx.array, n_hyper: int):
    shape = arrays[0][1].shape
    for name, a in arrays:
        if not isinstance(a, mx.array) or not mx.issubdtype(a.dtype, mx.floating):
            raise TypeError(f"[{op}] expected '{name}' to be a float mlx array")
        if a.shape != shape:
            raise ValueError(f"[{op}] expected '{name}' of shape {tuple(shape)}, got {a.shape}")
    if hyper.shape != (n_hyper,) or hyper.dtype != mx.float32:
        raise ValueError(f"[{op}] expected a float32 hyper array of shape ({n_hyper},)")


def _launch(kernel, param, ins, hyper, n_states, state_dtype):
    n = param.size
    grid, group = vec_grid(n)
    outs = kernel(
        param,
        *ins,
        hyper,
        scalar(n, mx.uint32),
        output_shapes=[param.shape] * (1 + n_states),
        output_dtypes=[param.dtype] + [state_dtype] * n_states,
        grid=grid,
        threadgroup=group,
        template=[("P", param.dtype), ("S", state_dtype), ("VEC", VEC)],
    )
    return tuple(outs)


def adamw_step(param, grad, m, v, hyper):
    """One fused AdamW update (see :func:`adamw_hyper` for ``hyper``).

    Returns:
        ``(new param, new m, new v)``; states keep their dtype.

    Shapes:
        param, grad, m, v: any (all the same); hyper: ``(7,)`` -> three arrays of that shape.
    """
    _check("adamw_step", [("param", param), ("grad", grad), ("m", m), ("v", v)], hyper, 7)
    if m.dtype != v.dtype:
        raise TypeError("[adamw_step] expected m and v of one dtype")
    if backend() == "cpu" or param.size == 0 or param.size >= 2**31:
        return adamw_step_ref(param, grad, m, v, hyper)
    return _launch(ADAMW_KERNEL, param, [grad, m, v], hyper, 2, m.dtype)


def lion_step(param, grad, m, hyper):
    """One fused Lion update (see :func:`lion_hyper` for ``hyper``).

    Returns:
        ``(new param, new m)``.

    Shapes:
        param, grad, m: any (all the same); hyper: ``(4,)`` -> two arrays of that shape.
    """
    _check("lion_step", [("param", param), ("grad", grad), ("m", m)], hyper, 4)
    if backend() == "cpu" or param.size == 0 or param.size >= 2**31:
        return lion_step_ref(param, grad, m, hyper)
    return _launch(LION_KERNEL, param, [grad, m], hyper, 1, m.dtype)


class _HyperCache:
    """The hyper array of the current step, per gradient dtype: built once per step, not per
    parameter. Keyed by the identity of the step and learning-rate arrays (MLX makes new ones
    every step), which it keeps alive so an id is never reused."""

    def __init__(self):
        self._key, self._arrays = None, {}

    def get(self, opt, dtype, build):
        key = (opt.state["step"], opt.state["learning_rate"])
        if self._key is None or any(a is not b for a, b in zip(key, self._key)):
            self._key, self._arrays = key, {}
        hyper = self._arrays.get(dtype)
        if hyper is None:
            hyper = self._arrays[dtype] = build()
        return hyper


class FusedAdamW(optim.AdamW):
    """``mlx.optimizers.AdamW`` whose per-parameter update is one fused kernel.

    Same arguments, state and results as ``mlx.optimizers.AdamW`` (up to float rounding:
    the fused math is float32).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._hyper = _HyperCache()

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
        def build():
            step = self.step if self.bias_correction else None
            lr = self.learning_rate
            return adamw_hyper(lr, self.betas, self.eps, self.weight_decay, step, gradient.dtype)

        hyper = self._hyper.get(self, gradient.dtype, build)
        p, state["m"], state["v"] = adamw_step(parameter, gradient, state["m"], state["v"], hyper)
        return p


class FusedLion(optim.Lion):
    """``mlx.optimizers.Lion`` whose per-parameter update is one fused kernel."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._hyper = _HyperCache()

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
        def build():
            return lion_hyper(self.learning_rate, self.betas, self.weight_decay, gradient.dtype)

        hyper = self._hyper.get(self, gradient.dtype, build)
        p, state["m"] = lion_step(parameter, gradient, state["m"], hyper)
        return p


# ---------------------------------------------------------------------------------------
# Catalog entries


def _arrays(case, dtype, rng, n):
    shape = case["shape"]

    def a(scale=1.0, positive=False):
        x = rng.normal(size=shape).astype("float32") * scale
        x = abs(x) if positive else x
        y = mx.array(x).astype(dtype)
        return y.T if case.get("transpose") else y

    return [a(), a(0.1), a(0.01), a(1e-4, positive=True)][:n]


def _make_adamw(case, dtype, rng):
    step = case.get("step")
    return (*_arrays(case, dtype, rng, 4), adamw_hyper(1e-3, (0.9, 0.999), 1e-8, 0.01, step, dtype))


def _make_lion(case, dtype, rng):
    return (*_arrays(case, dtype, rng, 3), lion_hyper(1e-4, (0.9, 0.99), 0.1, dtype))


CASES = (
    {"id": "1", "shape": (1,)},
    {"id": "31", "shape": (31,), "step": 1},
    {"id": "33x3", "shape": (3, 33), "step": 7},
    {"id": "4097", "shape": (4097,)},
    {"id": "transposed", "shape": (17, 9), "transpose": True, "step": 100},
)
BENCH = (
    {"id": "norm-4096", "shape": (4096,)},
    {"id": "proj-2048x2048", "shape": (2048, 2048), "step": 10},
    {"id": "mlp-4096x11008", "shape": (11008, 4096)},
)


def _stock_adamw(param, grad, m, v, hyper):
    lr, wdf, b1, b2, eps, c1, c2 = (hyper[i] for i in range(7))
    m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * mx.square(grad)
    return param * wdf - c1 * m / (mx.sqrt(v) * c2 + eps), m, v


def _stock_lion(param, grad, m, hyper):
    lr, wdf, b1, b2 = (hyper[i] for i in range(4))
    c = b1 * m + (1 - b1) * grad
    return wdf * param - lr * mx.sign(c), b2 * m + (1 - b2) * grad


for _name, _op, _ref, _make, _stock, _desc in (
    ("adamw_step", adamw_step, adamw_step_ref, _make_adamw, _stock_adamw,
     "fused AdamW update (param, m, v in one pass); FusedAdamW subclasses mlx's AdamW"),
    ("lion_step", lion_step, lion_step_ref, _make_lion, _stock_lion,
     "fused Lion update (param, m in one pass); FusedLion subclasses mlx's Lion"),
):  # fmt: skip
    register(
        KernelSpec(
            name=_name,
            family="optimizers",
            op=_op,
            ref=_ref,
            make_inputs=_make,
            cases=CASES,
            bench_cases=BENCH,
            stock=_stock,
            description=_desc,
        )
    )
