"""Catalog entries of the gated family."""

from __future__ import annotations

import mlx.core as mx

from . import gated as G
from .catalog import register_table

# gate/up shapes: rows of 1, 31, 33 and 4097, a transposed input, one decode token and a
# prefill batch. The concatenated forms take x of shape (..., 2H).
CASES = (
    {"id": "3x31", "shape": (3, 31)},
    {"id": "2x4097", "shape": (2, 4097)},
    {"id": "1", "shape": (1,)},
    {"id": "5x33", "shape": (5, 33)},
    {"id": "transposed", "shape": (6, 300), "transpose": True},
    {"id": "decode", "shape": (1, 4096)},
    {"id": "prefill", "shape": (1024, 4096)},
)
# Llama-3-8B's MLP width (14336) at decode and prefill.
BENCH = ({"id": "decode", "shape": (1, 14336)}, {"id": "prefill", "shape": (1024, 14336)})


def _array(rng, shape, dtype, scale, transpose=False, avoid=None):
    if transpose:
        shape = shape[:-2] + (shape[-1], shape[-2])
    a = mx.array((rng.normal(size=shape) * scale).astype("float32")).astype(dtype)
    if avoid is not None:
        # Values exactly at a clip limit have a one-sided derivative: move them off it.
        a = mx.where(mx.abs(a) == avoid, a * 1.03125, a)
    return a.T if transpose else a


def _two(scale=2.0, bias=False, avoid=None):
    def make_inputs(case, dtype, rng):
        shape, t = case["shape"], case.get("transpose", False)
        out = [_array(rng, shape, dtype, scale, t, avoid) for _ in range(2)]
        if bias:
            out += [_array(rng, (shape[-1],), dtype, 0.5) for _ in range(2)]
        return tuple(out)

    return make_inputs


def _concat(scale=2.0, bias=False, avoid=None):
    def make_inputs(case, dtype, rng):
        shape, t = case["shape"], case.get("transpose", False)
        wide = shape[:-1] + (2 * shape[-1],)
        out = [_array(rng, wide, dtype, scale, t, avoid)]
        if bias:
            out += [_array(rng, (shape[-1],), dtype, 0.5) for _ in range(2)]
        return tuple(out)

    return make_inputs


def _silu(g):
    return g * mx.sigmoid(g)


def _gelu(g):
    return 0.5 * g * (1.0 + mx.erf(g * 0.7071067811865476))


def _gelu_tanh(g):
    return 0.5 * g * (1.0 + mx.tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)))


def _oai(g, u):
    g = mx.minimum(g, 7.0)
    return (mx.clip(u, -7.0, 7.0) + 1.0) * (g * mx.sigmoid(1.702 * g))


def _halves(x):
    return mx.split(x, 2, axis=-1)


def _interleaved(x):
    return x[..., 0::2], x[..., 1::2]


_SPECS = [
    ("swiglu", G.swiglu, G.swiglu_ref, _two(), lambda g, u: _silu(g) * u, (0, 1),
     "silu(gate) * up"),
    ("geglu", G.geglu, G.geglu_ref, _two(), lambda g, u: _gelu(g) * u, (0, 1),
     "gelu(gate) * up, erf GELU"),
    ("geglu_tanh", lambda g, u: G.geglu(g, u, approximate="tanh"),
     lambda g, u: G.geglu_ref(g, u, approximate="tanh"), _two(),
     lambda g, u: _gelu_tanh(g) * u, (0, 1), "gelu(gate) * up, tanh GELU"),
    ("reglu", G.reglu, G.reglu_ref, _two(), lambda g, u: mx.maximum(g, 0.0) * u, (0, 1),
     "relu(gate) * up"),
    ("swiglu_oai", G.swiglu_oai, G.swiglu_oai_ref, _two(4.0, avoid=7.0), _oai, (0, 1),
     "GPT-OSS SwiGLU: (clip(up, -7, 7) + 1) * g * sigmoid(1.702 g), g = min(gate, 7)"),
    ("swiglu_bias", G.swiglu, G.swiglu_ref, _two(bias=True),
     lambda g, u, bg, bu: _silu(g + bg) * (u + bu), (0, 1, 2, 3),
     "silu(gate + b_gate) * (up + b_up), bias gradients"),
    ("swiglu_oai_bias", G.swiglu_oai, G.swiglu_oai_ref, _two(4.0, bias=True, avoid=7.0),
     lambda g, u, bg, bu: _oai(g + bg, u + bu), (0, 1, 2, 3), "GPT-OSS SwiGLU with biases"),
    ("swiglu_concat", G.swiglu_concat, G.swiglu_concat_ref, _concat(),
     lambda x: (lambda g, u: _silu(g) * u)(*_halves(x)), (0,),
     "silu(gate) * up of x = [gate, up] (mlx-lm gate_up_proj), no split copies"),
    ("geglu_concat", G.geglu_concat, G.geglu_concat_ref, _concat(),
     lambda x: (lambda g, u: _gelu(g) * u)(*_halves(x)), (0,), "erf GeGLU of x = [gate, up]"),
    ("reglu_concat", G.reglu_concat, G.reglu_concat_ref, _concat(),
     lambda x: (lambda g, u: mx.maximum(g, 0.0) * u)(*_halves(x)), (0,),
     "ReGLU of x = [gate, up]"),
    ("swiglu_oai_interleaved",
     lambda x, bg, bu: G.swiglu_oai_concat(x, bg, bu, layout="interleaved"),
     lambda x, bg, bu: G.swiglu_oai_concat_ref(x, bg, bu, "interleaved"),
     _concat(4.0, bias=True, avoid=7.0),
     lambda x, bg, bu: (lambda g, u: _oai(g + bg, u + bu))(*_interleaved(x)), (0, 1, 2),
     "GPT-OSS SwiGLU of the checkpoint's interleaved gate_up_proj output, with biases"),
]  # fmt: skip

register_table(
    "gated",
    _SPECS,
    ("name", "op", "ref", "make_inputs", "stock", "grad_argnums", "description"),
    cases=CASES,
    bench_cases=BENCH,
)
