"""Quant family: float64 oracles for every format, exact dequantize, fusions, errors, fallbacks.

Kernel numerics run on the CPU SIMT emulator (skipped without a C++ compiler); on a GPU the
same ops run their CUDA/Metal kernels. MLX's own CPU quantized_matmul rounds in the
activation dtype, so the oracles here are float64 and the tolerances are the kernels'.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, emulator
from zmlx.core import fallback
from zmlx.core.kernel import launch_count
from zmlx.kernels import quant
from zmlx.kernels.quant_specs import FORMATS, random_qweight, random_x
from zmlx.testing import assert_close, tolerance

KERNEL_FORMATS = [k for k in FORMATS if k != "a3"]
DTYPES = [mx.float32, mx.float16, mx.bfloat16]
IDS = ["f32", "f16", "bf16"]


def fmt(name):
    bits, gs, mode = FORMATS[name]
    return gs, bits, mode


def deq64(w, s, b, gs, bits, mode) -> np.ndarray:
    """The dequantized weight in float64 (MLX's dequantize on the CPU is exact in f32)."""
    with mx.stream(mx.cpu):
        d = mx.dequantize(w, s, b, group_size=gs, bits=bits, mode=mode, dtype=mx.float32)
        return np.array(d).astype(np.float64)


def f64(a) -> np.ndarray:
    return np.array(a.astype(mx.float32)).astype(np.float64)


def kernel_tol(dtype):
    # float32 accumulation; one rounding to the output dtype (two where a bias is added).
    return tolerance(dtype, 2.0)


def run_kernel(fn, *args, **kw):
    """``fn`` on the emulator, asserting a kernel launched."""
    with emulator():
        before = launch_count()
        out = fn(*args, **kw)
        mx.eval(out)
        assert launch_count() > before, "the kernel path did not run"
    return out


@pytest.mark.parametrize("t", [1, 4, 16])
@pytest.mark.parametrize("name", KERNEL_FORMATS)
def test_qmv_float64_every_format(name, t, rng):
    gs, bits, mode = fmt(name)
    d, n = 256, 24
    x = random_x(rng, (t, d), mx.bfloat16)
    w, s, b = random_qweight(rng, (n, d), mx.bfloat16, bits, gs, mode)
    got = run_kernel(quant.qmv, x, w, s, b, gs, bits, mode)
    want = f64(x) @ deq64(w, s, b, gs, bits, mode).T
    assert_close(got, mx.array(want).astype(mx.bfloat16), *(), check_dtype=True,
                 atol=kernel_tol(mx.bfloat16)[0], rtol=kernel_tol(mx.bfloat16)[1])  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_qmv_fusions_float64(dtype, rng):
    gs, bits, mode = fmt("a4g64")
    d, n, t = 128, 40, 3
    x = random_x(rng, (t, d), dtype)
    wg, wu, wk = (random_qweight(rng, (m, d), dtype, bits, gs, mode) for m in (n, n, 8))
    bias, res = random_x(rng, (n,), dtype), random_x(rng, (t, n), dtype)
    xx = f64(x)
    g = xx @ deq64(*wg, gs, bits, mode).T
    u = xx @ deq64(*wu, gs, bits, mode).T
    k = xx @ deq64(*wk, gs, bits, mode).T
    atol, rtol = kernel_tol(dtype)

    def check(got, want):
        assert_close(got, mx.array(want.astype(np.float32)).astype(dtype), atol=atol, rtol=rtol)

    check(run_kernel(quant.qmv_bias, x, *wg, bias, gs, bits, mode), g + f64(bias))
    check(run_kernel(quant.qmv_residual, x, *wg, res, gs, bits, mode), g + f64(res))
    check(run_kernel(quant.qmv_swiglu, x, *wg, *wu, gs, bits, mode), g / (1 + np.exp(-g)) * u)
    q, kk, v = run_kernel(quant.qkv_proj, x, *wg, *wk, *wu, gs, bits, mode)
    check(q, g)
    check(kk, k)
    check(v, u)
    bq, bk, bv = random_x(rng, (n,), dtype), random_x(rng, (8,), dtype), random_x(rng, (n,), dtype)
    outs = run_kernel(quant.qkv_proj, x, *wg, *wk, *wu, gs, bits, mode, bq, bk, bv)
    for got, want in zip(outs, (g + f64(bq), k + f64(bk), u + f64(bv))):
        check(got, want)


@pytest.mark.parametrize(
    "t,d,n",
    [(16, 64, 257), (1, 4352, 5), (2, 96, 1)],
    ids=["rows-per-warp-4-remainder", "x-streamed-d4352", "one-row"],
)
def test_qmv_layouts(t, d, n, rng):
    """R > 1 rows per warp with a partial last block, x too long for registers, one row."""
    gs, bits, mode = fmt("a4g32")
    x = random_x(rng, (t, d), mx.float16)
    w, s, b = random_qweight(rng, (n, d), mx.float16, bits, gs, mode)
    got = run_kernel(quant.qmv, x, w, s, b, gs, bits, mode)
    want = f64(x) @ deq64(w, s, b, gs, bits, mode).T
    assert_close(got, mx.array(want.astype(np.float32)).astype(mx.float16), atol=4e-3, rtol=4e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_dequantize_mxfp4_edge_scales(dtype, rng):
    """e8m0 scales 0 (2^-127), 255 (inf) and ones that overflow float16, bit for bit."""
    w, _, _ = random_qweight(rng, (6, 64), dtype, 4, 32, "mxfp4")
    s = mx.array(np.array([[0, 1], [126, 127], [128, 142], [143, 160], [200, 254], [255, 3]],
                          dtype=np.uint8))  # fmt: skip
    got = run_kernel(quant.dequantize, w, s, None, 32, 4, "mxfp4", dtype)
    with mx.stream(mx.cpu):
        want = mx.dequantize(w, s, group_size=32, bits=4, mode="mxfp4", dtype=dtype)
    a, e = np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32))
    assert np.array_equal(np.isnan(a), np.isnan(e))
    assert np.array_equal(a[~np.isnan(a)], e[~np.isnan(e)])


def test_dequantize_affine_rounds_twice(rng):
    """mx.dequantize rounds q * scale, then + bias, in the output dtype (never an fma)."""
    gs, bits, mode = fmt("a8g64")
    w, s, b = random_qweight(rng, (16, 128), mx.bfloat16, bits, gs, mode)
    got = run_kernel(quant.dequantize, w, s, b, gs, bits, mode)
    with mx.stream(mx.cpu):  # MLX's CPU kernel; its CUDA kernel fuses the multiply-add
        want = quant.dequantize_ref(w, s, b, gs, bits, mode)
        mx.eval(want)
    assert mx.array_equal(got, want).item()


def test_fallbacks_note_and_match(rng):
    gs, bits, mode = fmt("a4g64")
    w, s, b = random_qweight(rng, (8, 128), mx.bfloat16, bits, gs, mode)
    w3, s3, b3 = random_qweight(rng, (8, 128), mx.bfloat16, 3, 64, "affine")
    x = random_x(rng, (17, 128), mx.bfloat16)
    cases = [
        ((x, w, s, b, gs, bits, mode), "rows > 16"),
        ((x[:2], w3, s3, b3, 64, 3, "affine"), "3-bit"),
        ((x[:2].astype(mx.float16), w, s, b, gs, bits, mode), "scales dtype differs from x"),
    ]
    with emulator():
        for args, why in cases:
            before, notes = launch_count(), fallback.counts().get("qmv", 0)
            got = quant.qmv(*args)
            mx.eval(got)
            assert launch_count() == before, why
            assert fallback.counts().get("qmv", 0) == notes + 1, why
            assert_close(got, quant.qmv_ref(*args), atol=0, rtol=0, name=why)


def test_errors(rng):
    gs, bits, mode = fmt("a4g64")
    w, s, b = random_qweight(rng, (8, 128), mx.bfloat16, bits, gs, mode)
    x = random_x(rng, (2, 128), mx.bfloat16)
    with pytest.raises(ValueError, match=r"\[qmv\] expected 'w' to be a 2-d uint32"):
        quant.qmv(x, w.astype(mx.int32), s, b)
    with pytest.raises(ValueError, match=r"\[qmv\] expected 'x' with 128 inputs"):
        quant.qmv(x[:, :64], w, s, b)
    with pytest.raises(ValueError, match=r"\[qmv\] expected biases"):
        quant.qmv(x, w, s, None)
    with pytest.raises(ValueError, match=r"\[qmv\] expected scales of 'w' with shape"):
        quant.qmv(x, w, s[:, :1], b)
    with pytest.raises(TypeError, match=r"\[qmv\] expected 'x' to be float32"):
        quant.qmv(x.astype(mx.int32), w, s, b)
    with pytest.raises(ValueError, match=r"\[qmv_bias\] expected 'bias' of shape \(8,\)"):
        quant.qmv_bias(x, w, s, b, random_x(rng, (9,), mx.bfloat16))
    with pytest.raises(TypeError, match=r"\[qmv_residual\] expected 'residual' in bfloat16"):
        quant.qmv_residual(x, w, s, b, random_x(rng, (2, 8), mx.float32))
    with pytest.raises(ValueError, match=r"\[qkv_proj\] expected all of bias_q"):
        quant.qkv_proj(x, w, s, b, w, s, b, w, s, b, bias_q=random_x(rng, (8,), mx.bfloat16))


@pytest.mark.parametrize("name", KERNEL_FORMATS)
def test_every_format_compiles(name):
    """NVRTC (when available) and the Metal shim, at a real decode shape (zero weights)."""
    gs, bits, mode = fmt(name)
    d, n = 2048, 768
    w = mx.zeros((n, d * bits // 32), dtype=mx.uint32)
    sdt = mx.uint8 if mode == "mxfp4" else mx.bfloat16
    s = mx.zeros((n, d // gs), dtype=sdt)
    b = None if mode == "mxfp4" else mx.zeros((n, d // gs), dtype=mx.bfloat16)
    x = mx.zeros((1, d), dtype=mx.bfloat16)
    assert_compiles(quant.qmv_swiglu, x, w, s, b, w, s, b, gs, bits, mode)


def test_random_qweight_covers_every_code(rng):
    w, _, _ = random_qweight(rng, (64, 256), mx.float16, 4, 64, "affine")
    words = np.array(w)
    nibbles = {int(v) for v in np.unique((words[..., None] >> (4 * np.arange(8))) & 0xF)}
    assert nibbles == set(range(16))
    assert math.isclose(float(np.array(w).size), 64 * 256 / 8)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_qmv_geglu_float64(dtype, approximate, rng):
    """A Gemma MLP's gelu(gate) * up: erf (Gemma) and tanh (Gemma 2/3/4) forms."""
    gs, bits, mode = fmt("a4g64")
    d, n, t = 128, 40, 3
    x = random_x(rng, (t, d), dtype)
    wg, wu = (random_qweight(rng, (n, d), dtype, bits, gs, mode) for _ in range(2))
    g = f64(x) @ deq64(*wg, gs, bits, mode).T
    u = f64(x) @ deq64(*wu, gs, bits, mode).T
    if approximate == "tanh":
        act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
    else:
        act = 0.5 * g * (1 + np.vectorize(math.erf)(g / np.sqrt(2)))
    got = run_kernel(quant.qmv_geglu, x, *wg, *wu, gs, bits, mode, approximate)
    atol, rtol = kernel_tol(dtype)
    assert_close(got, mx.array((act * u).astype(np.float32)).astype(dtype), atol=atol, rtol=rtol)
    with pytest.raises(ValueError, match=r"\[qmv_geglu\] expected approximate 'none' or 'tanh'"):
        quant.qmv_geglu(x, *wg, *wu, gs, bits, mode, "erf")


def test_rows_not_a_multiple_of_the_group_size_are_refused(rng):
    """Packed rows whose length is not a whole number of groups (no MLX quantization makes
    them) get a clear error, not a kernel reading past the scales."""
    w = random_qweight(rng, (8, 64), mx.bfloat16, 4, 32, "affine")
    words = mx.zeros((8, 5), dtype=mx.uint32)  # 40 four-bit inputs: one group and a part
    with pytest.raises(ValueError, match=r"\[qmv\] expected 'w' rows of a multiple of the group"):
        quant.qmv(random_x(rng, (1, 40), mx.bfloat16), words, w[1][:, :1], w[2][:, :1], 32, 4)
