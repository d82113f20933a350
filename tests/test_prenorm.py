"""A decoder layer's post-attention norm and residual adds folded into the MoE kernels.

``router_fused`` and ``gather_qmv_swiglu`` take ``prenorm=(a, weight, eps)`` and read
``rms_norm(x + a, weight, eps)``; ``gather_qmv_combine`` takes ``residual=(x, a)`` and adds
``x + a`` last. Each is checked against the unfused composition in MLX ops (kernels on the CPU
SIMT emulator; the CPU path is that composition), and compiled at Qwen3-30B-A3B's shape.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, assert_same_routing, zero_experts
from test_quant import fmt, kernel_tol, run_kernel
from zmlx.core.backend import force_backend
from zmlx.kernels import moe
from zmlx.kernels import routers as R
from zmlx.kernels._common import prenorm_ref
from zmlx.kernels.moe_specs import random_indices, random_weights
from zmlx.kernels.quant_specs import random_qweight, random_x
from zmlx.testing import assert_close

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
IDS = ["f32", "f16", "bf16"]


def _stream(rng, t, d, dtype):
    """A residual stream, an attention output and a norm weight (awkward scales)."""
    x = random_x(rng, (t, d), dtype) * 3
    a = random_x(rng, (t, d), dtype)
    w = (mx.array(rng.uniform(0.5, 1.5, size=(d,)).astype(np.float32))).astype(dtype)
    return x, a, w


def _router(rng, e, d, dtype, quant):
    """A router weight ``(e, d)`` and the ``router_fused`` keywords for it (8-bit when
    ``quant``)."""
    w = (mx.array(rng.normal(size=(e, d)).astype(np.float32)) * 0.2).astype(dtype)
    if not quant:
        return w, {}
    w, s, b = mx.quantize(w, group_size=64, bits=8)
    return w, dict(scales=s, biases=b, group_size=64, bits=8)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("name", ["a4g64", "a8g32", "mxfp4"])
def test_gather_qmv_swiglu_prenorm(name, t, dtype, rng):
    gs, bits, mode = fmt(name)
    e, k, d, n = 6, 4, 192, 40
    x, a, nw = _stream(rng, t, d, dtype)
    wg = random_qweight(rng, (e, n, d), dtype, bits, gs, mode)
    wu = random_qweight(rng, (e, n, d), dtype, bits, gs, mode)
    idx = random_indices(rng, (t,), k, e)
    got = run_kernel(moe.gather_qmv_swiglu, x, *wg, *wu, idx, gs, bits, mode,
                     prenorm=(a, nw, 1e-5))  # fmt: skip
    want = run_kernel(moe.gather_qmv_swiglu, prenorm_ref(x, (a, nw, 1e-5)), *wg, *wu, idx, gs,
                      bits, mode)  # fmt: skip
    atol, rtol = kernel_tol(dtype)
    assert_close(got, want, atol=atol, rtol=rtol, check_dtype=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("quant", [False, True], ids=["float", "q8"])
def test_router_fused_prenorm(quant, dtype, rng):
    t, d, e = 2, 256, 16
    x, a, nw = _stream(rng, t, d, dtype)
    w, kw = _router(rng, e, d, dtype, quant)
    rule = R.RouterRule("softmax_topk", 4, norm=True)
    i1, w1 = run_kernel(R.router_fused, x, w, rule, prenorm=(a, nw, 1e-6), **kw)
    i2, w2 = run_kernel(R.router_fused, prenorm_ref(x, (a, nw, 1e-6)), w, rule, **kw)
    assert_same_routing((i1, w1), (i2, w2), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("quant", [False, True], ids=["float", "q8"])
def test_router_fused_returns_the_normed_input(quant, dtype, rng):
    """``return_normed``: the router's launch writes ``rms_norm(x + a)`` as the unfused ops
    compute it (bit for bit in half precision; in float32 the sum of squares may add in
    another order), and routes as before."""
    t, d, e = 3, 192, 8
    x, a, nw = _stream(rng, t, d, dtype)
    w, kw = _router(rng, e, d, dtype, quant)
    rule = R.RouterRule("softmax_topk", 2)
    i1, w1, xn = run_kernel(R.router_fused, x, w, rule, prenorm=(a, nw, 1e-6),
                            return_normed=True, **kw)  # fmt: skip
    i2, w2 = run_kernel(R.router_fused, x, w, rule, prenorm=(a, nw, 1e-6), **kw)
    want = prenorm_ref(x, (a, nw, 1e-6))
    assert xn.dtype == dtype and xn.shape == x.shape
    if dtype == mx.float32:
        assert_close(xn, want, atol=1e-6, rtol=1e-6)
    else:
        assert mx.array_equal(xn, want).item()
    assert mx.array_equal(i1, i2).item() and mx.array_equal(w1, w2).item()
    with force_backend("cpu"):
        i3, w3, xn3 = R.router_fused(x, w, rule, prenorm=(a, nw, 1e-6), return_normed=True, **kw)
    assert mx.array_equal(xn3, want).item()


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shared", [False, True], ids=["no-shared", "shared"])
def test_gather_qmv_combine_residual_rounds_as_mlx_lm(shared, dtype, rng):
    gs, bits, mode = fmt("a4g64")
    e, k, t, i_dim, d = 5, 3, 2, 128, 48
    h = random_x(rng, (t, k, i_dim), dtype)
    w = random_qweight(rng, (e, d, i_dim), dtype, bits, gs, mode)
    idx, wts = random_indices(rng, (t,), k, e), random_weights(rng, (t,), k, dtype)
    x, a = random_x(rng, (t, d), dtype) * 4, random_x(rng, (t, d), dtype)
    sh = random_x(rng, (t, d), dtype) if shared else None
    got = run_kernel(moe.gather_qmv_combine, h, *w, idx, wts, gs, bits, mode, None, sh,
                     residual=(x, a))  # fmt: skip
    block = run_kernel(moe.gather_qmv_combine, h, *w, idx, wts, gs, bits, mode, None, sh)
    # mlx-lm: h = x + a; out = h + block(...), each add rounded to the activation dtype.
    assert mx.array_equal(got, (x + a) + block).item()


def test_cpu_path_is_the_unfused_composition(rng):
    gs, bits, mode = fmt("a4g64")
    e, k, t, d, n = 4, 2, 2, 128, 32
    x, a, nw = _stream(rng, t, d, mx.bfloat16)
    wg = random_qweight(rng, (e, n, d), mx.bfloat16, bits, gs, mode)
    wu = random_qweight(rng, (e, n, d), mx.bfloat16, bits, gs, mode)
    wr = random_x(rng, (8, d), mx.bfloat16)
    idx = random_indices(rng, (t,), k, e)
    xn = mx.fast.rms_norm(x + a, nw, 1e-6)
    rule = R.RouterRule("softmax_topk", 2)
    with force_backend("cpu"):
        got = moe.gather_qmv_swiglu(x, *wg, *wu, idx, gs, bits, mode, prenorm=(a, nw, 1e-6))
        inds, wts = R.router_fused(x, wr, rule, prenorm=(a, nw, 1e-6))
    assert mx.array_equal(got, moe.gather_qmv_swiglu_ref(xn, *wg, *wu, idx, gs, bits, mode)).item()
    i2, w2 = R.router_fused_ref(xn, wr, rule)
    assert mx.array_equal(inds, i2).item() and mx.array_equal(wts, w2).item()


def test_errors(rng):
    x = mx.zeros((1, 64), dtype=mx.bfloat16)
    w = mx.zeros((8, 64), dtype=mx.bfloat16)
    rule = R.RouterRule("softmax_topk", 2)
    with pytest.raises(ValueError, match=r"\[router_fused\] expected a prenorm residual like x"):
        R.router_fused(x, w, rule, prenorm=(mx.zeros((1, 32), mx.bfloat16), mx.ones((64,)), 1e-6))
    with pytest.raises(ValueError, match=r"\[router_fused\] expected prenorm with return_normed"):
        R.router_fused(x, w, rule, return_normed=True)
    with pytest.raises(ValueError, match=r"\[router_fused\] expected a prenorm weight of shape"):
        R.router_fused(x, w, rule, prenorm=(x, mx.ones((32,)), 1e-6))
    with pytest.raises(TypeError, match=r"\[router_fused\] expected prenorm = \(residual"):
        R.router_fused(x, w, rule, prenorm=(x, mx.ones((64,))))
    gs, bits, mode = fmt("a4g64")
    wq = random_qweight(rng, (4, 16, 64), mx.bfloat16, bits, gs, mode)
    idx = mx.zeros((1, 2), dtype=mx.uint32)
    with pytest.raises(TypeError, match=r"\[gather_qmv_combine\] expected residual = \(x, a\)"):
        moe.gather_qmv_combine(mx.zeros((1, 2, 64), mx.bfloat16), *random_qweight(
            rng, (4, 64, 64), mx.bfloat16, bits, gs, mode), idx, mx.ones((1, 2)), gs, bits, mode,
            residual=x)  # fmt: skip
    with pytest.raises(ValueError, match=r"\[gather_qmv_swiglu\] expected a prenorm residual"):
        moe.gather_qmv_swiglu(x, *wq, *wq, idx, gs, bits, mode, prenorm=(x[:, :8], x[0], 1e-6))


def test_qwen3_decode_shapes_compile():
    """The folded kernels at Qwen3-30B-A3B's decode shape: NVRTC when available, and the
    Metal shim."""
    d, i_dim, e, k = 2048, 768, 128, 8
    gs, bits, mode = 64, 4, "affine"

    def q(n, m):
        return zero_experts(e, n, m, bits, gs)

    x = mx.zeros((1, d), dtype=mx.bfloat16)
    nw = mx.ones((d,), dtype=mx.bfloat16)
    idx = mx.zeros((1, k), dtype=mx.uint32)
    wts = mx.zeros((1, k), dtype=mx.bfloat16)
    rw, rs, rb = mx.quantize(mx.zeros((e, d)), group_size=64, bits=8)
    rule = R.RouterRule("softmax_topk", k, norm=True)

    def block(x):
        i, w = R.router_fused(x, rw, rule, scales=rs.astype(mx.bfloat16),
                              biases=rb.astype(mx.bfloat16), group_size=64, bits=8,
                              prenorm=(x, nw, 1e-6))  # fmt: skip
        h = moe.gather_qmv_swiglu(x, *q(i_dim, d), *q(i_dim, d), idx, gs, bits, mode,
                                  prenorm=(x, nw, 1e-6))  # fmt: skip
        return moe.gather_qmv_combine(h, *q(d, i_dim), idx, wts, gs, bits, mode,
                                      residual=(x, x)), i, w  # fmt: skip

    assert_compiles(block, x)
