"""Catalog entries of the moe family, with random routing for tests and benchmarks."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from .catalog import KernelSpec, register
from .moe import (
    gather_qmv,
    gather_qmv_combine,
    gather_qmv_combine_ref,
    gather_qmv_geglu,
    gather_qmv_geglu_ref,
    gather_qmv_ref,
    gather_qmv_swiglu,
    gather_qmv_swiglu_oai,
    gather_qmv_swiglu_oai_ref,
    gather_qmv_swiglu_ref,
    moe_combine,
    moe_combine_exact,
    moe_combine_exact_ref,
    moe_combine_ref,
    moe_combine_shared,
    moe_combine_shared_ref,
    moe_experts,
    moe_experts_ref,
)
from .quant_specs import FORMATS, QTOL, random_qweight, random_x

# Real decode shapes: hidden D, expert intermediate I, experts E, top-k K, weight format.
MODELS = {
    "qwen3-30b-a3b": (2048, 768, 128, 8, "a4g64"),
    "lfm2-8b-a1b": (2048, 1792, 32, 4, "a4g64"),
    "glm-4.7-flash": (2048, 1536, 64, 4, "a4g64"),
    "gpt-oss-20b": (2880, 2880, 32, 4, "mxfp4"),
}
BENCH = tuple(
    {"id": f"{m}-t{t}", "t": t, "d": d, "n": i, "e": e, "k": k, "fmt": f}
    for m, (d, i, e, k, f) in MODELS.items()
    for t in (1, 4, 16)
)
CASES = (
    {"id": "t1-k4-a4g64", "t": 1, "k": 4, "e": 8, "d": 256, "n": 96, "fmt": "a4g64"},
    {"id": "t4-k2-a8g32", "t": 4, "k": 2, "e": 5, "d": 160, "n": 33, "fmt": "a8g32"},
    {"id": "t16-k8-a4g128", "t": 16, "k": 8, "e": 16, "d": 256, "n": 31, "fmt": "a4g128"},
    {"id": "t3-k4-mxfp4", "t": 3, "k": 4, "e": 6, "d": 96, "n": 40, "fmt": "mxfp4", "bias": 1},
    {"id": "t2x2-k3-a8g128", "t": (2, 2), "k": 3, "e": 4, "d": 256, "n": 17, "fmt": "a8g128"},
    {"id": "t4-k2-a4g32-slot", "t": 4, "k": 2, "e": 3, "d": 64, "n": 24, "fmt": "a4g32",
     "per_slot": 1},
    {"id": "t20-ref", "t": 20, "k": 2, "e": 4, "d": 64, "n": 8, "fmt": "a4g32",
     "reference_only": True},
    {"id": "a3-ref", "t": 2, "k": 2, "e": 4, "d": 64, "n": 8, "fmt": "a3",
     "reference_only": True},
)  # fmt: skip


def _lead(case):
    t = case["t"]
    return tuple(t) if isinstance(t, tuple) else (t,)


def _fmt(case):
    bits, gs, mode = FORMATS[case["fmt"]]
    return gs, bits, mode


def _experts(case, dtype, rng, n_out, n_in):
    bits, gs, mode = FORMATS[case["fmt"]]
    return random_qweight(rng, (case["e"], n_out, n_in), dtype, bits, gs, mode)


def random_indices(rng, lead, k, e):
    """Expert ids per token, with the first and last expert and a repeated expert present."""
    idx = rng.integers(0, e, size=(*lead, k)).reshape(-1, k)
    idx[0, 0] = 0
    idx[-1, -1] = e - 1
    if k > 1:
        idx[0, 1] = idx[0, 0]
    return mx.array(idx.reshape(*lead, k).astype(np.uint32))


def random_weights(rng, lead, k, dtype):
    w = rng.uniform(0.05, 1.0, size=(*lead, k))
    return mx.array((w / w.sum(-1, keepdims=True)).astype(np.float32)).astype(dtype)


def _make_gather(case, dtype, rng):
    lead, k = _lead(case), case["k"]
    xs = lead + ((k,) if case.get("per_slot") else ()) + (case["d"],)
    x = random_x(rng, xs, dtype)
    w = _experts(case, dtype, rng, case["n"], case["d"])
    idx = random_indices(rng, lead, k, case["e"])
    bias = random_x(rng, (case["e"], case["n"]), dtype) if case.get("bias") else None
    return (x, *w, idx, *_fmt(case), bias)


def _make_swiglu(oai):
    def make(case, dtype, rng):
        lead, k = _lead(case), case["k"]
        x = random_x(rng, lead + (case["d"],), dtype)
        wg = _experts(case, dtype, rng, case["n"], case["d"])
        wu = _experts(case, dtype, rng, case["n"], case["d"])
        idx = random_indices(rng, lead, k, case["e"])
        args = (x, *wg, *wu, idx, *_fmt(case))
        if oai:
            # Scale x up so some gate/up values pass the clamp limit (7).
            x = x * 4.0
            bg, bu = (random_x(rng, (case["e"], case["n"]), dtype) for _ in range(2))
            args = (x, *wg, *wu, idx, *_fmt(case), bg, bu)
        return args

    return make


def _make_geglu(case, dtype, rng):
    return (*_make_swiglu(False)(case, dtype, rng), None, None, case.get("approximate", "none"))


_GEGLU_CASES = tuple(
    dict(c, id=f"{c['id']}-tanh", approximate="tanh") if i % 2 else c for i, c in enumerate(CASES)
)


def _make_gather_combine(case, dtype, rng):
    lead, k = _lead(case), case["k"]
    # Inputs case["d"] (a multiple of the group size), outputs case["n"] (awkward sizes).
    h = random_x(rng, lead + (k, case["d"]), dtype)
    w = _experts(case, dtype, rng, case["n"], case["d"])
    idx = random_indices(rng, lead, k, case["e"])
    wts = random_weights(rng, lead, k, dtype)
    bias = shared = gate = None
    if case.get("bias"):
        bias = random_x(rng, (case["e"], case["n"]), dtype)
        shared = random_x(rng, lead + (case["n"],), dtype)
        gate = random_x(rng, lead + (1,), dtype)
    return (h, *w, idx, wts, *_fmt(case), bias, shared, gate)


def _make_experts(case, dtype, rng):
    lead, k = _lead(case), case["k"]
    x = random_x(rng, lead + (case["d"],), dtype)
    wg = _experts(case, dtype, rng, case["n"], case["d"])
    wu = _experts(case, dtype, rng, case["n"], case["d"])
    wd = _experts(case, dtype, rng, case["d"], case["n"])
    idx = random_indices(rng, lead, k, case["e"])
    wts = random_weights(rng, lead, k, dtype)
    return (x, *wg, *wu, *wd, idx, wts, *_fmt(case))


EXPERT_CASES = (
    {"id": "t1-k4-a4g64", "t": 1, "k": 4, "e": 8, "d": 256, "n": 128, "fmt": "a4g64"},
    {"id": "t4-k2-a8g32", "t": 4, "k": 2, "e": 5, "d": 160, "n": 64, "fmt": "a8g32"},
    {"id": "t16-k8-a4g128", "t": 16, "k": 8, "e": 16, "d": 256, "n": 128, "fmt": "a4g128"},
    {"id": "t3-k4-mxfp4", "t": 3, "k": 4, "e": 6, "d": 96, "n": 64, "fmt": "mxfp4"},
)
COMBINE_CASES = (
    {"id": "t1-k8-d2048", "t": 1, "k": 8, "d": 2048},
    {"id": "t4-k4-d33", "t": 4, "k": 4, "d": 33},
    {"id": "t16-k2-d4096", "t": 16, "k": 2, "d": 4096},
    {"id": "t2x3-k1-d64", "t": (2, 3), "k": 1, "d": 64},
    {"id": "t5-k4-d40-f32w", "t": 5, "k": 4, "d": 40, "w32": True},
    {"id": "transposed", "t": 3, "k": 4, "d": 24, "transpose": True},
)
COMBINE_BENCH = tuple(
    {"id": f"{m}-t{t}", "t": t, "k": k, "d": d}
    for m, (d, _, _, k, _) in MODELS.items()
    for t in (1, 16)
)


def _make_combine(shared):
    def make(case, dtype, rng):
        lead, k, d = _lead(case), case["k"], case["d"]
        if case.get("transpose"):
            y = random_x(rng, lead + (d, k), dtype).swapaxes(-1, -2)
        else:
            y = random_x(rng, lead + (k, d), dtype)
        wts = random_weights(rng, lead, k, mx.float32 if case.get("w32") else dtype)
        if not shared:
            return (y, wts)
        gate = random_x(rng, lead + (1,), dtype) if k > 1 else None
        return (y, wts, random_x(rng, lead + (d,), dtype), gate)

    return make


# The kernel rounds as MLX's CUDA reduce does (products and running sum in the promoted
# dtype); MLX's CPU sums half types in float32, so off the GPU the two differ by an ulp or so.
# test_moe.py checks bit-exactness against the expression on a GPU.
_EXACT_TOL = {mx.float32: (1e-5, 1e-5), mx.float16: (2e-3, 2e-3), mx.bfloat16: (1.6e-2, 1e-2)}
# MLX's gather_qmm rounds in the activation dtype more often than the fused kernel does.
_OAI_TOL = {mx.float32: (1e-3, 1e-3), mx.float16: (1e-1, 2e-2), mx.bfloat16: (5e-1, 6e-2)}
_COMBINE_TOL = {mx.float32: (1e-5, 1e-5), mx.float16: (2e-3, 2e-3), mx.bfloat16: (1.6e-2, 1e-2)}
_OAI_CASES = tuple(c for c in CASES if c["fmt"] in ("mxfp4", "a4g64", "a3") or "ref" in c["id"])
# mlx-lm gives contiguous y; MLX reduces other layouts (and D % 8 != 0) in another order.
_EXACT_CASES = tuple(c for c in COMBINE_CASES if c["d"] % 8 == 0 and not c.get("transpose"))

for _s in (
    ("gather_qmv", gather_qmv, gather_qmv_ref, _make_gather, CASES, BENCH, QTOL,
     "each token times its top-k experts' quantized weights (gather_qmm at decode)"),
    ("gather_qmv_swiglu", gather_qmv_swiglu, gather_qmv_swiglu_ref, _make_swiglu(False), CASES,
     BENCH, QTOL, "selected experts' gate+up quantized matvecs and SwiGLU in one kernel"),
    ("gather_qmv_swiglu_oai", gather_qmv_swiglu_oai, gather_qmv_swiglu_oai_ref,
     _make_swiglu(True), _OAI_CASES, BENCH, _OAI_TOL,
     "gather_qmv_swiglu with GPT-OSS's clamped SwiGLU and per-expert biases"),
    ("gather_qmv_geglu", gather_qmv_geglu, gather_qmv_geglu_ref, _make_geglu, _GEGLU_CASES,
     BENCH, QTOL, "selected experts' gate+up quantized matvecs and GeGLU (erf or tanh) in one kernel"),
    ("gather_qmv_combine", gather_qmv_combine, gather_qmv_combine_ref, _make_gather_combine,
     CASES, BENCH, QTOL, "experts' down projection x router weight, summed over top-k, one kernel"),
    ("moe_experts", moe_experts, moe_experts_ref, _make_experts, EXPERT_CASES, BENCH, QTOL,
     "a MoE block's routed experts: gather_qmv_swiglu + gather_qmv_combine vs stock SwitchGLU"),
    ("moe_combine", moe_combine, moe_combine_ref, _make_combine(False), COMBINE_CASES,
     COMBINE_BENCH, _COMBINE_TOL, "weighted sum over experts, float32 accumulation"),
    ("moe_combine_exact", moe_combine_exact, moe_combine_exact_ref, _make_combine(False),
     _EXACT_CASES, COMBINE_BENCH, _EXACT_TOL,
     "weighted sum over experts rounded exactly as mlx-lm's (y * w).sum(-2) expression"),
    ("moe_combine_shared", moe_combine_shared, moe_combine_shared_ref, _make_combine(True),
     COMBINE_CASES, COMBINE_BENCH, _COMBINE_TOL,
     "weighted sum over experts plus the (optionally sigmoid-gated) shared expert"),
):  # fmt: skip
    _name, _op, _ref, _make, _cases, _bench, _tol, _desc = _s
    register(
        KernelSpec(
            name=_name,
            family="moe",
            op=_op,
            ref=_ref,
            make_inputs=_make,
            cases=_cases,
            bench_cases=_bench,
            stock=_ref,
            tolerances=_tol,
            description=_desc,
        )
    )
