"""Catalog entries of the quant family, and random quantized weights for tests and benchmarks."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from .catalog import KernelSpec, register
from .quant import (
    qkv_proj,
    qkv_proj_ref,
    qmv,
    qmv_bias,
    qmv_bias_ref,
    qmv_geglu,
    qmv_geglu_ref,
    qmv_ref,
    qmv_residual,
    qmv_residual_ref,
    qmv_swiglu,
    qmv_swiglu_ref,
)
from .quantize import dequantize, dequantize_ref, quantize, quantize_ref

# ---------------------------------------------------------------------------------------
# Random quantized weights for tests and benchmarks (no mx.quantize: fast at real sizes)


def random_qweight(rng, shape, dtype, bits=4, group_size=64, mode="affine"):
    """Random packed words and plausible scales for a weight of ``shape`` ``(..., N, D)``.

    Every bit pattern occurs (all codes, all nibbles); dequantized values are about
    ``1 / sqrt(D)``, as mlx-lm's initialisation gives.
    """
    *lead, n, d = shape
    words = rng.integers(0, 2**32, size=(*lead, n, d * bits // 32), dtype=np.uint64)
    w = mx.array(words.astype(np.uint32))
    gshape = (*lead, n, d // group_size)
    amp = 1.0 / math.sqrt(d)
    if mode == "mxfp4":
        # lut values reach 6; 2^(s - 127) near amp / 3
        base = 127 + round(math.log2(amp / 3))
        s = mx.array(rng.integers(base - 1, base + 2, size=gshape).astype(np.uint8))
        return w, s, None
    step = 2 * amp / (2**bits - 1)
    sc = rng.uniform(0.5, 1.5, size=gshape) * step
    bi = -sc * (2**bits - 1) / 2 + rng.uniform(-0.2, 0.2, size=gshape) * amp
    return (
        w,
        mx.array(sc.astype(np.float32)).astype(dtype),
        mx.array(bi.astype(np.float32)).astype(dtype),
    )


def random_x(rng, shape, dtype):
    return mx.array(rng.normal(size=shape).astype(np.float32)).astype(dtype)


# ---------------------------------------------------------------------------------------
# Catalog

FORMATS = {
    "a4g64": (4, 64, "affine"),
    "a4g32": (4, 32, "affine"),
    "a4g128": (4, 128, "affine"),
    "a8g64": (8, 64, "affine"),
    "a8g32": (8, 32, "affine"),
    "a8g128": (8, 128, "affine"),
    "mxfp4": (4, 32, "mxfp4"),
}
# MLX's CUDA qmv accumulates 4-bit products in the activation dtype; the kernels use float32.
QTOL = {mx.float32: (2e-4, 2e-4), mx.float16: (1e-2, 1e-2), mx.bfloat16: (1e-1, 5e-2)}

CASES = (
    {"id": "t1-a4g64", "t": 1, "d": 256, "n": 96, "fmt": "a4g64"},
    {"id": "t4-a8g32", "t": 4, "d": 160, "n": 33, "fmt": "a8g32"},
    {"id": "t16-a4g128", "t": 16, "d": 384, "n": 31, "fmt": "a4g128"},
    {"id": "t3-mxfp4", "t": 3, "d": 96, "n": 40, "fmt": "mxfp4"},
    {"id": "t2x2-a8g128", "t": (2, 2), "d": 256, "n": 17, "fmt": "a8g128"},
    {"id": "t20-ref", "t": 20, "d": 64, "n": 8, "fmt": "a4g32", "reference_only": True},
    {"id": "t2-a3-ref", "t": 2, "d": 64, "n": 8, "fmt": "a3", "reference_only": True},
)
FORMATS["a3"] = (3, 64, "affine")
BENCH = (
    {"id": "qwen3-30b-qproj-t1", "t": 1, "d": 2048, "n": 4096, "fmt": "a4g64"},
    {"id": "qwen3-30b-qproj-t16", "t": 16, "d": 2048, "n": 4096, "fmt": "a4g64"},
    {"id": "gpt-oss-20b-q-t1", "t": 1, "d": 2880, "n": 4096, "fmt": "mxfp4"},
    {"id": "llama-8b-down-t1", "t": 1, "d": 14336, "n": 4096, "fmt": "a4g64"},
)


def _lead(case):
    t = case["t"]
    return tuple(t) if isinstance(t, tuple) else (t,)


def _mk_q(case, dtype, rng, n=None, d=None):
    bits, gs, mode = FORMATS[case["fmt"]]
    return random_qweight(rng, (n or case["n"], d or case["d"]), dtype, bits, gs, mode)


def _fmt(case):
    bits, gs, mode = FORMATS[case["fmt"]]
    return gs, bits, mode


def _make_qmv(extra):
    def make(case, dtype, rng):
        x = random_x(rng, _lead(case) + (case["d"],), dtype)
        w, s, b = _mk_q(case, dtype, rng)
        more = ()
        if extra == "bias":
            more = (random_x(rng, (case["n"],), dtype),)
        elif extra == "residual":
            more = (random_x(rng, _lead(case) + (case["n"],), dtype),)
        return (x, w, s, b, *more, *_fmt(case))

    return make


def _make_dequant(case, dtype, rng):
    w, s, b = _mk_q(case, dtype, rng)
    gs, bits, mode = _fmt(case)
    return (w, s, b, gs, bits, mode, None if mode == "affine" else dtype)


def _make_swiglu(case, dtype, rng):
    x = random_x(rng, _lead(case) + (case["d"],), dtype)
    return (x, *_mk_q(case, dtype, rng), *_mk_q(case, dtype, rng), *_fmt(case))


def _make_geglu(case, dtype, rng):
    return (*_make_swiglu(case, dtype, rng), case.get("approximate", "none"))


_GEGLU_CASES = tuple(
    dict(c, id=f"{c['id']}-tanh", approximate="tanh") if i % 2 else c for i, c in enumerate(CASES)
)


def _make_qkv(case, dtype, rng):
    x = random_x(rng, _lead(case) + (case["d"],), dtype)
    n = case["n"]
    ws = [_mk_q(case, dtype, rng, n=m) for m in (n, max(1, n // 4), max(1, n // 4))]
    lins = ()
    if case.get("bias"):
        lins = tuple(random_x(rng, (w[0].shape[0],), dtype) for w in ws)
    return (x, *ws[0], *ws[1], *ws[2], *_fmt(case), *lins)


_QKV_CASES = CASES[:4] + ({"id": "t1-bias-a4g64", "t": 1, "d": 128, "n": 64, "fmt": "a4g64",
                           "bias": True},)  # fmt: skip
_DEQ_CASES = tuple(
    {"id": f"{k}", "t": 1, "d": 256, "n": 33, "fmt": k} for k in FORMATS if k != "a3"
) + ({"id": "a3-ref", "t": 1, "d": 128, "n": 4, "fmt": "a3", "reference_only": True},)
_DEQ_TOL = {mx.float32: (0.0, 0.0), mx.float16: (0.0, 0.0), mx.bfloat16: (0.0, 0.0)}


for _name, _op, _ref, _make, _cases, _tol, _desc in (  # dequantize: MLX's CPU rounding
    ("dequantize", dequantize, dequantize_ref, _make_dequant, _DEQ_CASES, _DEQ_TOL,
     "mx.dequantize (affine 4/8-bit, mxfp4) with its exact rounding"),
    ("qmv", qmv, qmv_ref, _make_qmv(None), CASES, QTOL,
     "quantized matvec x @ W.T for decode (T <= 16), float32 accumulation"),
    ("qmv_bias", qmv_bias, qmv_bias_ref, _make_qmv("bias"), CASES, QTOL,
     "quantized matvec plus linear bias in one kernel"),
    ("qmv_residual", qmv_residual, qmv_residual_ref, _make_qmv("residual"), CASES, QTOL,
     "residual + quantized matvec in one kernel"),
    ("qmv_swiglu", qmv_swiglu, qmv_swiglu_ref, _make_swiglu, CASES, QTOL,
     "dense MLP gate and up quantized matvecs with SwiGLU in one kernel"),
    ("qmv_geglu", qmv_geglu, qmv_geglu_ref, _make_geglu, _GEGLU_CASES, QTOL,
     "dense GeGLU MLP (Gemma: erf or tanh GELU) gate and up quantized matvecs in one kernel"),
    ("qkv_proj", qkv_proj, qkv_proj_ref, _make_qkv, _QKV_CASES, QTOL,
     "q, k and v quantized projections for decode in one launch"),
):  # fmt: skip
    register(
        KernelSpec(
            name=_name,
            family="quant",
            op=_op,
            ref=_ref,
            make_inputs=_make,
            cases=_cases,
            bench_cases=BENCH,
            stock=_ref,
            tolerances=_tol,
            description=_desc,
            cpu_rules="always" if _name == "dequantize" else None,
        )
    )


# ---------------------------------------------------------------------------------------
# quantize: bit-exact against mx.quantize (scales and biases too)

_QZ_FORMATS = dict(FORMATS, a2g64=(2, 64, "affine"), a2g32=(2, 32, "affine"))
_QZ_CASES = (
    {"id": "a4g64-1x256", "shape": (1, 256), "fmt": "a4g64"},
    {"id": "a8g32-31x96", "shape": (31, 96), "fmt": "a8g32"},
    {"id": "a4g128-33x128", "shape": (33, 128), "fmt": "a4g128"},
    {"id": "a2g64-experts-3x5x128", "shape": (3, 5, 128), "fmt": "a2g64"},
    {"id": "a8g128-transposed", "shape": (256, 6), "fmt": "a8g128", "transpose": True},
    {"id": "a4g32-4097x32", "shape": (4097, 32), "fmt": "a4g32"},
    {"id": "mxfp4-17x160", "shape": (17, 160), "fmt": "mxfp4"},
    {"id": "mxfp4-2x3x64", "shape": (2, 3, 64), "fmt": "mxfp4"},
    {"id": "a3-ref", "shape": (4, 64), "fmt": "a3", "reference_only": True},
)
# Real uses: mlx-lm's QuantizedKVCache quantizes each new token's keys and values (8-bit, g64),
# and converting a model quantizes its expert stacks (one layer's gate_proj here).
_QZ_BENCH = (
    {"id": "qwen3-30b-kv-decode", "shape": (1, 4, 1, 128), "fmt": "a8g64"},
    {"id": "qwen3-30b-kv-prefill", "shape": (1, 4, 2048, 128), "fmt": "a8g64"},
    {"id": "qwen3-30b-experts", "shape": (128, 768, 2048), "fmt": "a4g64"},
    {"id": "gpt-oss-20b-kv-decode", "shape": (1, 8, 1, 64), "fmt": "a8g64"},
    {"id": "gpt-oss-20b-kv-prefill", "shape": (1, 8, 2048, 64), "fmt": "a8g64"},
    {"id": "gpt-oss-20b-experts", "shape": (32, 2880, 2880), "fmt": "mxfp4"},
)


def _make_quantize(case, dtype, rng):
    bits, gs, mode = _QZ_FORMATS[case["fmt"]]
    shape = case["shape"]
    w = random_x(rng, shape, dtype)
    if case.get("transpose"):
        w = w.T
    return (w, gs, bits, mode)


register(
    KernelSpec(
        name="quantize",
        family="quant",
        op=quantize,
        ref=quantize_ref,
        make_inputs=_make_quantize,
        cases=_QZ_CASES,
        bench_cases=_QZ_BENCH,
        stock=quantize_ref,
        tolerances=_DEQ_TOL,
        description="mx.quantize bit for bit (affine 2/4/8-bit, mxfp4), one warp-lane chunk per group",
        cpu_rules="emulated",
    )
)
