"""Activations: pointwise functions, each one fused kernel with a symbolic VJP.

Each op is an :func:`zmlx.elementwise` expression (rendered for CUDA/Metal, lowered to MLX ops
on the CPU). The references below are written independently in MLX ops, as an oracle that
does not share the expression (or its derivative) with the op.
"""

from __future__ import annotations

import math

import mlx.core as mx

from ..authoring.elementwise import elementwise
from .catalog import KernelSpec, register

# ---------------------------------------------------------------------------------------
# References (plain MLX, computed in float32, returned in the input dtype)


def _f32(fn):
    def ref(x, *rest):
        return fn(x.astype(mx.float32), *rest).astype(x.dtype)

    ref.__name__ = fn.__name__
    return ref


REFS = {
    "exp": _f32(mx.exp),
    "log": _f32(mx.log),
    "tanh": _f32(mx.tanh),
    "sigmoid": _f32(mx.sigmoid),
    "relu": _f32(lambda x: mx.maximum(x, 0.0)),
    "relu2": _f32(lambda x: mx.square(mx.maximum(x, 0.0))),
    "leaky_relu": _f32(lambda x: mx.where(x > 0, x, 0.01 * x)),
    "elu": _f32(lambda x: mx.where(x > 0, x, mx.expm1(x))),
    "selu": _f32(
        lambda x: 1.0507009873554805 * mx.where(x > 0, x, 1.6732632423543772 * mx.expm1(x))
    ),
    "silu": _f32(lambda x: x * mx.sigmoid(x)),
    "gelu": _f32(lambda x: 0.5 * x * (1 + mx.erf(x / math.sqrt(2.0)))),
    "gelu_tanh": _f32(
        lambda x: 0.5 * x * (1 + mx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    ),
    "quick_gelu": _f32(lambda x: x * mx.sigmoid(1.702 * x)),
    "softplus": _f32(lambda x: mx.logaddexp(x, 0.0)),
    "mish": _f32(lambda x: x * mx.tanh(mx.logaddexp(x, 0.0))),
    "hard_sigmoid": _f32(lambda x: mx.clip(x / 6 + 0.5, 0.0, 1.0)),
    "hard_swish": _f32(lambda x: x * mx.clip(x / 6 + 0.5, 0.0, 1.0)),
    "softsign": _f32(lambda x: x / (1 + mx.abs(x))),
    "log_sigmoid": _f32(lambda x: -mx.logaddexp(-x, 0.0)),
    "tanhshrink": _f32(lambda x: x - mx.tanh(x)),
}

# Kernel expressions. Stable forms: softplus never overflows (see zmlx.core.expr), sigmoid is
# the two-branch form in the dialect prelude.
EXPRS = {
    "exp": "exp(x)",
    "log": "log(x)",
    "tanh": "tanh(x)",
    "sigmoid": "sigmoid(x)",
    "relu": "maximum(x, 0)",
    "relu2": "square(maximum(x, 0))",
    "leaky_relu": "where(x > 0, x, 0.01 * x)",
    "elu": "where(x > 0, x, expm1(x))",
    "selu": "1.0507009873554805 * where(x > 0, x, 1.6732632423543772 * expm1(x))",
    "silu": "x * sigmoid(x)",
    "gelu": "gelu(x)",
    "gelu_tanh": "gelu_tanh(x)",
    "quick_gelu": "x * sigmoid(1.702 * x)",
    "softplus": "softplus(x)",
    "mish": "x * tanh(softplus(x))",
    "hard_sigmoid": "clip(x / 6 + 0.5, 0, 1)",
    "hard_swish": "x * clip(x / 6 + 0.5, 0, 1)",
    "softsign": "x / (1 + abs(x))",
    "log_sigmoid": "log_sigmoid(x)",
    "tanhshrink": "x - tanh(x)",
}

DESCRIPTIONS = {
    "exp": "e^x",
    "log": "natural logarithm (inputs drawn positive in tests)",
    "tanh": "hyperbolic tangent",
    "sigmoid": "logistic sigmoid, overflow-free two-branch form",
    "relu": "max(x, 0)",
    "relu2": "max(x, 0)^2 (squared ReLU)",
    "leaky_relu": "x if x > 0 else 0.01 x",
    "elu": "x if x > 0 else exp(x) - 1",
    "selu": "scaled ELU (Klambauer et al.)",
    "silu": "x * sigmoid(x) (swish)",
    "gelu": "exact GELU with erf",
    "gelu_tanh": "GELU, tanh approximation",
    "quick_gelu": "x * sigmoid(1.702 x)",
    "softplus": "log(1 + e^x), stable for large |x|",
    "mish": "x * tanh(softplus(x))",
    "hard_sigmoid": "clip(x / 6 + 1/2, 0, 1)",
    "hard_swish": "x * hard_sigmoid(x)",
    "softsign": "x / (1 + |x|)",
    "log_sigmoid": "log(sigmoid(x)), stable",
    "tanhshrink": "x - tanh(x)",
}

_OPS = {
    name: elementwise(text, name=name)
    for name, text in EXPRS.items()
    if name not in ("leaky_relu", "elu")
}

# Public ops: plain functions that validate input and run the fused op.
exp = _OPS["exp"]
log = _OPS["log"]
tanh = _OPS["tanh"]
sigmoid = _OPS["sigmoid"]
relu = _OPS["relu"]
relu2 = _OPS["relu2"]
selu = _OPS["selu"]
silu = _OPS["silu"]
gelu = _OPS["gelu"]
gelu_tanh = _OPS["gelu_tanh"]
quick_gelu = _OPS["quick_gelu"]
softplus = _OPS["softplus"]
mish = _OPS["mish"]
hard_sigmoid = _OPS["hard_sigmoid"]
hard_swish = _OPS["hard_swish"]
softsign = _OPS["softsign"]
log_sigmoid = _OPS["log_sigmoid"]
tanhshrink = _OPS["tanhshrink"]

_LEAKY = elementwise("where(x > 0, x, alpha * x)", inputs=("x", "alpha"), name="leaky_relu_a")
_ELU = elementwise("where(x > 0, x, alpha * expm1(x))", inputs=("x", "alpha"), name="elu_a")


def leaky_relu(x: mx.array, negative_slope: float = 0.01) -> mx.array:
    """LeakyReLU with a runtime slope (one kernel for every slope).

    Shapes:
        x: any -> same.
    """
    return _LEAKY(x, float(negative_slope))


def elu(x: mx.array, alpha: float = 1.0) -> mx.array:
    """ELU with a runtime alpha.

    Shapes:
        x: any -> same.
    """
    return _ELU(x, float(alpha))


# ---------------------------------------------------------------------------------------
# Catalog entries

CASES = (
    {"id": "1", "shape": (1,)},
    {"id": "31", "shape": (31,)},
    {"id": "33x3", "shape": (3, 33)},
    {"id": "4097", "shape": (4097,)},
    {"id": "transposed", "shape": (17, 9), "transpose": True},
)
BENCH = (
    {"id": "decode", "shape": (1, 4096)},
    {"id": "prefill", "shape": (1024, 4096)},
)
_POSITIVE = {"log"}


def _make(name):
    def make_inputs(case, dtype, rng):
        x = rng.normal(size=case["shape"]).astype("float32") * 2.0
        if name in _POSITIVE:
            x = abs(x) + 0.05
        a = mx.array(x).astype(dtype)
        return (a.T if case.get("transpose") else a,)

    return make_inputs


for _name in EXPRS:
    register(
        KernelSpec(
            name=_name,
            family="activations",
            op={"leaky_relu": leaky_relu, "elu": elu}.get(_name) or _OPS[_name],
            ref=REFS[_name],
            make_inputs=_make(_name),
            cases=CASES,
            bench_cases=BENCH,
            stock=REFS[_name],
            grad_argnums=(0,),
            description=DESCRIPTIONS[_name],
        )
    )
