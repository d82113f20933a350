"""Gated activations of a GLU MLP: SwiGLU, GeGLU (erf or tanh GELU), ReGLU, GPT-OSS's SwiGLU.

``act(gate) * up`` in one kernel, in two forms:

* two inputs, ``swiglu(gate, up)``: a :func:`zmlx.elementwise` op (fused forward, symbolic
  backward kernel; inputs broadcast);
* one concatenated input, ``swiglu_concat(x)``: ``x`` of width ``2H`` holds the gate in its
  first half and up in its second (``gate, up = mx.split(x, 2, axis=-1)``, as mlx-lm's fused
  ``gate_up_proj`` MLPs do: phi3, glm4, glm; PyTorch's ``chunk(2, -1)`` too). The kernel reads
  both halves in place (no split copies) and its backward writes ``dx`` of width ``2H`` in one
  pass. ``layout="interleaved"`` reads gate from even and up from odd columns, the layout of
  GPT-OSS's checkpoint ``gate_up_proj`` (mlx-lm's ``gpt_oss.sanitize`` de-interleaves it into
  separate ``gate_proj``/``up_proj`` at load time, so its model calls the two-input form).

Every op takes optional ``gate_bias``/``up_bias`` vectors of length ``H``, added before the
activation (``act(gate + b_gate) * (up + b_up)``), with gradients. Math is float32; the
output takes the promoted dtype of the array inputs.
"""

from __future__ import annotations

import math

import mlx.core as mx

from ..authoring.elementwise import elementwise
from ..core import expr as E
from ..core.backend import backend
from ..core.dtypes import check_float, promote
from ..core.kernel import Kernel, dims, grid_1d

# act(g) as an expression of g; u is the linear half.
_ACTS = {
    "swiglu": "{g} * sigmoid({g}) * {u}",
    "geglu": "gelu({g}) * {u}",
    "geglu_tanh": "gelu_tanh({g}) * {u}",
    "reglu": "maximum({g}, 0) * {u}",
    # mlx-lm's swiglu_oai: gate clipped from above only, up clipped both ways, +1 on up.
    "swiglu_oai": "(clip({u}, -{limit}, {limit}) + 1) * (minimum({g}, {limit}) * "
    "sigmoid({alpha} * minimum({g}, {limit})))",
}
_APPROX = {"none": "geglu", "tanh": "geglu_tanh", "precise": "geglu_tanh"}
_LAYOUTS = ("halves", "interleaved")

# ---------------------------------------------------------------------------------------
# References (plain MLX, float32 math, written apart from the kernel expressions)


def _act_ref(kind: str, g: mx.array, alpha: float = 1.702, limit: float = 7.0) -> mx.array:
    if kind == "swiglu":
        return g * mx.sigmoid(g)
    if kind == "geglu":
        return 0.5 * g * (1.0 + mx.erf(g / math.sqrt(2.0)))
    if kind == "geglu_tanh":
        return 0.5 * g * (1.0 + mx.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g**3)))
    if kind == "reglu":
        return mx.maximum(g, 0.0)
    g = mx.minimum(g, limit)
    return g * mx.sigmoid(alpha * g)


def _gated_ref(kind, gate, up, gate_bias=None, up_bias=None, alpha=1.702, limit=7.0):
    arrays = [a for a in (gate, up, gate_bias, up_bias) if a is not None]
    dtype = promote(a.dtype for a in arrays)
    g, u = gate.astype(mx.float32), up.astype(mx.float32)
    if gate_bias is not None:
        g = g + gate_bias.astype(mx.float32)
    if up_bias is not None:
        u = u + up_bias.astype(mx.float32)
    if kind == "swiglu_oai":
        u = mx.clip(u, -limit, limit) + 1.0
    return (_act_ref(kind, g, alpha, limit) * u).astype(dtype)


def _split_ref(x: mx.array, layout: str = "halves"):
    if layout == "interleaved":
        return x[..., 0::2], x[..., 1::2]
    h = x.shape[-1] // 2
    return x[..., :h], x[..., h:]


def swiglu_ref(gate, up, gate_bias=None, up_bias=None):
    """``silu(gate) * up``. Shapes: gate, up ``(..., H)`` -> ``(..., H)``."""
    return _gated_ref("swiglu", gate, up, gate_bias, up_bias)


def geglu_ref(gate, up, gate_bias=None, up_bias=None, approximate="none"):
    """``gelu(gate) * up``. Shapes: gate, up ``(..., H)`` -> ``(..., H)``."""
    return _gated_ref(_APPROX[approximate], gate, up, gate_bias, up_bias)


def reglu_ref(gate, up, gate_bias=None, up_bias=None):
    """``relu(gate) * up``. Shapes: gate, up ``(..., H)`` -> ``(..., H)``."""
    return _gated_ref("reglu", gate, up, gate_bias, up_bias)


def swiglu_oai_ref(gate, up, gate_bias=None, up_bias=None, alpha=1.702, limit=7.0):
    """mlx-lm's ``swiglu_oai``. Shapes: gate, up ``(..., H)`` -> ``(..., H)``."""
    return _gated_ref("swiglu_oai", gate, up, gate_bias, up_bias, alpha, limit)


def gated_concat_ref(kind, x, gate_bias=None, up_bias=None, layout="halves", **kw):
    """Any gated op on a concatenated ``x``. Shapes: x ``(..., 2H)`` -> ``(..., H)``."""
    gate, up = _split_ref(x, layout)
    return _gated_ref(kind, gate, up, gate_bias, up_bias, **kw)


def swiglu_concat_ref(x, gate_bias=None, up_bias=None, layout="halves"):
    """Shapes: x ``(..., 2H)`` -> ``(..., H)``."""
    return gated_concat_ref("swiglu", x, gate_bias, up_bias, layout)


def geglu_concat_ref(x, gate_bias=None, up_bias=None, layout="halves", approximate="none"):
    """Shapes: x ``(..., 2H)`` -> ``(..., H)``."""
    return gated_concat_ref(_APPROX[approximate], x, gate_bias, up_bias, layout)


def reglu_concat_ref(x, gate_bias=None, up_bias=None, layout="halves"):
    """Shapes: x ``(..., 2H)`` -> ``(..., H)``."""
    return gated_concat_ref("reglu", x, gate_bias, up_bias, layout)


def swiglu_oai_concat_ref(x, gate_bias=None, up_bias=None, layout="halves", alpha=1.702, limit=7.0):
    """Shapes: x ``(..., 2H)`` -> ``(..., H)``."""
    return gated_concat_ref("swiglu_oai", x, gate_bias, up_bias, layout, alpha=alpha, limit=limit)


# ---------------------------------------------------------------------------------------
# Kernels


def _text(kind: str, has_gb: bool, has_ub: bool, alpha: float, limit: float) -> str:
    g = "(gate + gate_bias)" if has_gb else "gate"
    u = "(up + up_bias)" if has_ub else "up"
    return _ACTS[kind].format(g=g, u=u, alpha=repr(float(alpha)), limit=repr(float(limit)))


def _inputs(has_gb: bool, has_ub: bool) -> tuple[str, ...]:
    return ("gate", "up") + (("gate_bias",) if has_gb else ()) + (("up_bias",) if has_ub else ())


_EW: dict[tuple, object] = {}


def _two_input_op(kind, has_gb, has_ub, alpha, limit):
    key = (kind, has_gb, has_ub, alpha, limit)
    op = _EW.get(key)
    if op is None:
        text = _text(kind, has_gb, has_ub, alpha, limit)
        op = _EW.setdefault(key, elementwise(text, inputs=_inputs(has_gb, has_ub), name=kind))
    return op


_CONCAT_HEAD = """  const uint n = zx_dims[0];
  const uint H = zx_dims[1];
  if (tid >= n) { return; }
  const uint r = tid / H;
  const uint j = tid - r * H;
  const long gi = (long)r * (2 * (long)H) + OFFSET;
  const long ui = gi + STEP;
  const float v_gate = static_cast<float>(x[gi]);
  const float v_up = static_cast<float>(x[ui]);
"""


class _ConcatGated:
    """Forward and backward kernels of one gated expression on a concatenated input."""

    def __init__(self, kind, has_gb, has_ub, alpha, limit, layout):
        self.kind, self.has_gb, self.has_ub, self.layout = kind, has_gb, has_ub, layout
        self.alpha, self.limit = alpha, limit
        names = _inputs(has_gb, has_ub)
        node = E.parse(_text(kind, has_gb, has_ub, alpha, limit), names, op_name=kind)
        spell = {n: f"v_{n}" for n in names}
        head = _CONCAT_HEAD.replace("OFFSET", "2 * (long)j" if layout == "interleaved" else "j")
        head = head.replace("STEP", "1" if layout == "interleaved" else "(long)H")
        for n in names[2:]:
            head += f"  const float v_{n} = static_cast<float>({n}[j]);\n"
        bias = list(names[2:])
        stmts, (fexpr,) = E.render([node], spell, prefix="f")
        self.forward = Kernel(
            f"{kind}_concat_{layout}",
            ["x", *bias, "zx_dims"],
            ["out"],
            head + "".join(f"  {s}\n" for s in stmts) + f"  out[tid] = static_cast<O>({fexpr});\n",
        )
        stmts, (dg, du) = E.render([E.grad(node, "gate"), E.grad(node, "up")], spell, prefix="d")
        self.backward = Kernel(
            f"{kind}_concat_{layout}_vjp",
            ["x", *bias, "cot", "zx_dims"],
            ["dx"],
            head
            + "  const float g_out = static_cast<float>(cot[tid]);\n"
            + "".join(f"  {s}\n" for s in stmts)
            + f"  dx[gi] = static_cast<O>(g_out * ({dg}));\n"
            + f"  dx[ui] = static_cast<O>(g_out * ({du}));\n",
        )
        self.fn = self._function()

    def _ref(self, x, *bias):
        b = iter(bias)
        gb = next(b) if self.has_gb else None
        ub = next(b) if self.has_ub else None
        return gated_concat_ref(self.kind, x, gb, ub, self.layout, **self._consts())

    def _consts(self):
        return {"alpha": self.alpha, "limit": self.limit} if self.kind == "swiglu_oai" else {}

    def _launch(self, kernel, arrays, out_shape, out_dtype, n_rows_h, h):
        grid, group = grid_1d(n_rows_h, 256)
        (out,) = kernel(
            *arrays,
            dims(n_rows_h, h),
            output_shapes=[out_shape],
            output_dtypes=[out_dtype],
            grid=grid,
            threadgroup=group,
            template=[("O", out_dtype)],
        )
        return out

    def _function(self):
        @mx.custom_function
        def fn(x, *bias):
            h = x.shape[-1] // 2
            n = x.size // 2
            if backend() == "cpu" or x.size > 2**31 - 1:
                return self._ref(x, *bias)
            dtype = promote(a.dtype for a in (x, *bias))
            return self._launch(self.forward, [x, *bias], x.shape[:-1] + (h,), dtype, n, h)

        @fn.vjp
        def fn_vjp(primals, cotangent, output):
            x, *bias = [primals] if isinstance(primals, mx.array) else list(primals)
            h = x.shape[-1] // 2
            if backend() == "cpu" or x.size > 2**31 - 1:
                _, grads = mx.vjp(self._ref, [x, *bias], [cotangent])
                return grads[0] if not bias else tuple(grads)
            dx = self._launch(
                self.backward, [x, *bias, cotangent], x.shape, x.dtype, x.size // 2, h
            )
            grads = [dx]
            if bias:
                # A bias gets the sum over rows of its half of dx (float32 accumulation).
                flat = dx.reshape(-1, 2 * h).astype(mx.float32)
                gate_half, up_half = _split_ref(flat, self.layout)
                if self.has_gb:
                    grads.append(gate_half.sum(axis=0).astype(bias[0].dtype))
                if self.has_ub:
                    grads.append(up_half.sum(axis=0).astype(bias[-1].dtype))
            return grads[0] if len(grads) == 1 else tuple(grads)

        return fn


_CONCAT: dict[tuple, _ConcatGated] = {}


def _check(op, name, a, allow_none=False):
    if a is None and allow_none:
        return
    if not isinstance(a, mx.array):
        raise TypeError(f"[{op}] expected '{name}' to be an mlx array, got {type(a).__name__}")
    check_float(op, name, a)


def _check_bias(op, name, b, h):
    _check(op, name, b, allow_none=True)
    if b is not None and (b.ndim != 1 or b.shape[0] != h):
        raise ValueError(f"[{op}] expected '{name}' of shape ({h},), got {tuple(b.shape)}")


def _gated(op, kind, gate, up, gate_bias, up_bias, alpha=1.702, limit=7.0):
    _check(op, "gate", gate)
    _check(op, "up", up)
    try:
        shape = mx.broadcast_shapes(gate.shape, up.shape)
    except ValueError:
        shape = gate.shape  # the elementwise op reports the mismatch
    h = shape[-1] if len(shape) else 1
    _check_bias(op, "gate_bias", gate_bias, h)
    _check_bias(op, "up_bias", up_bias, h)
    fn = _two_input_op(kind, gate_bias is not None, up_bias is not None, alpha, limit)
    return fn(gate, up, *[b for b in (gate_bias, up_bias) if b is not None])


def _gated_concat(op, kind, x, gate_bias, up_bias, layout, alpha=1.702, limit=7.0):
    _check(op, "x", x)
    if layout not in _LAYOUTS:
        raise ValueError(f"[{op}] expected layout in {_LAYOUTS}, got {layout!r}")
    if x.ndim == 0 or x.shape[-1] % 2:
        raise ValueError(f"[{op}] expected 'x' with an even last axis (2H), got {tuple(x.shape)}")
    h = x.shape[-1] // 2
    _check_bias(op, "gate_bias", gate_bias, h)
    _check_bias(op, "up_bias", up_bias, h)
    bias = [b for b in (gate_bias, up_bias) if b is not None]
    if x.size == 0:
        return mx.zeros(x.shape[:-1] + (h,), promote(a.dtype for a in (x, *bias)))
    key = (kind, gate_bias is not None, up_bias is not None, alpha, limit, layout)
    impl = _CONCAT.get(key)
    if impl is None:
        impl = _CONCAT.setdefault(key, _ConcatGated(*key))
    return impl.fn(x, *bias)


# ---------------------------------------------------------------------------------------
# Public ops


def swiglu(gate, up, gate_bias=None, up_bias=None):
    """``silu(gate + gate_bias) * (up + up_bias)`` (biases optional), one fused kernel.

    Shapes:
        gate, up: broadcastable, ``(..., H)``; biases ``(H,)`` -> ``(..., H)``.
    """
    return _gated("swiglu", "swiglu", gate, up, gate_bias, up_bias)


def geglu(gate, up, gate_bias=None, up_bias=None, approximate="none"):
    """``gelu(gate) * up``; ``approximate="none"`` (erf) or ``"tanh"`` (``"precise"`` too, as
    MLX's ``nn.GELU`` names the tanh form).

    Shapes:
        gate, up: broadcastable, ``(..., H)``; biases ``(H,)`` -> ``(..., H)``.
    """
    if approximate not in _APPROX:
        raise ValueError(f"[geglu] expected approximate in {tuple(_APPROX)}, got {approximate!r}")
    return _gated("geglu", _APPROX[approximate], gate, up, gate_bias, up_bias)


def reglu(gate, up, gate_bias=None, up_bias=None):
    """``relu(gate) * up`` (the gradient at ``gate == 0`` is 0, as MLX's ``relu``).

    Shapes:
        gate, up: broadcastable, ``(..., H)``; biases ``(H,)`` -> ``(..., H)``.
    """
    return _gated("reglu", "reglu", gate, up, gate_bias, up_bias)


def swiglu_oai(gate, up, gate_bias=None, up_bias=None, alpha=1.702, limit=7.0):
    """GPT-OSS's SwiGLU, as mlx-lm's ``swiglu_oai(gate, x, alpha, limit)`` computes it.

    ``g = min(gate, limit)``, ``u = clip(up, -limit, limit)``, out ``(u + 1) * g *
    sigmoid(alpha * g)``. Note mlx-lm's ``SwigluOAI.__call__(x, gate)`` takes up first; this
    op takes ``(gate, up)`` like the function. ``alpha``/``limit`` are compiled in (one build
    per pair; GPT-OSS uses the defaults).

    Shapes:
        gate, up: broadcastable, ``(..., H)``; biases ``(H,)`` -> ``(..., H)``.
    """
    return _gated("swiglu_oai", "swiglu_oai", gate, up, gate_bias, up_bias, alpha, limit)


def swiglu_concat(x, gate_bias=None, up_bias=None, layout="halves"):
    """:func:`swiglu` of a concatenated ``[gate, up]`` (see the module docstring).

    Shapes:
        x: ``(..., 2H)``; biases ``(H,)`` -> ``(..., H)``.
    """
    return _gated_concat("swiglu_concat", "swiglu", x, gate_bias, up_bias, layout)


def geglu_concat(x, gate_bias=None, up_bias=None, layout="halves", approximate="none"):
    """:func:`geglu` of a concatenated ``[gate, up]``.

    Shapes:
        x: ``(..., 2H)``; biases ``(H,)`` -> ``(..., H)``.
    """
    if approximate not in _APPROX:
        raise ValueError(
            f"[geglu_concat] expected approximate in {tuple(_APPROX)}, got {approximate!r}"
        )
    return _gated_concat("geglu_concat", _APPROX[approximate], x, gate_bias, up_bias, layout)


def reglu_concat(x, gate_bias=None, up_bias=None, layout="halves"):
    """:func:`reglu` of a concatenated ``[gate, up]``.

    Shapes:
        x: ``(..., 2H)``; biases ``(H,)`` -> ``(..., H)``.
    """
    return _gated_concat("reglu_concat", "reglu", x, gate_bias, up_bias, layout)


def swiglu_oai_concat(x, gate_bias=None, up_bias=None, layout="halves", alpha=1.702, limit=7.0):
    """:func:`swiglu_oai` of a concatenated ``[gate, up]`` (``layout="interleaved"`` for
    GPT-OSS's checkpoint ``gate_up_proj`` order).

    Shapes:
        x: ``(..., 2H)``; biases ``(H,)`` -> ``(..., H)``.
    """
    return _gated_concat(
        "swiglu_oai_concat", "swiglu_oai", x, gate_bias, up_bias, layout, alpha, limit
    )


# Registers the catalog entries (kept apart to keep this file short).
from . import gated_specs as _specs  # noqa: E402,F401
