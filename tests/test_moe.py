"""MoE family: float64 oracles for the expert kernels, the exact combine's rounding model,
GPT-OSS's clamped SwiGLU and biases, errors, and compile checks at real decode shapes.

Kernel numerics run on the CPU SIMT emulator (skipped without a C++ compiler); on a GPU the
same ops run their CUDA/Metal kernels.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles
from test_quant import deq64, f64, fmt, kernel_tol, run_kernel
from zmlx.core.dtypes import promote
from zmlx.kernels import moe
from zmlx.kernels.moe_specs import MODELS, random_indices, random_weights
from zmlx.kernels.quant_specs import FORMATS, random_qweight, random_x
from zmlx.testing import assert_close

KERNEL_FORMATS = [k for k in FORMATS if k != "a3"]


def experts64(x64, w64, idx):
    """``out[t, j] = W[idx[t, j]] @ x[t]`` (x per token) or ``@ x[t, j]`` (x per slot)."""
    t, k = idx.shape
    out = np.zeros((t, k, w64.shape[1]))
    for i in range(t):
        for j in range(k):
            xv = x64[i, j] if x64.ndim == 3 else x64[i]
            out[i, j] = w64[idx[i, j]] @ xv
    return out


def close(got, want, dtype, scale=1.0):
    atol, rtol = kernel_tol(dtype)
    assert_close(got, mx.array(want.astype(np.float32)).astype(dtype), atol=atol * scale,
                 rtol=rtol * scale)  # fmt: skip


@pytest.mark.parametrize("t", [1, 4, 16])
@pytest.mark.parametrize("name", KERNEL_FORMATS)
def test_gather_qmv_swiglu_float64(name, t, rng):
    gs, bits, mode = fmt(name)
    e, k, d, n = 6, 4, 128, 24
    x = random_x(rng, (t, d), mx.bfloat16)
    wg = random_qweight(rng, (e, n, d), mx.bfloat16, bits, gs, mode)
    wu = random_qweight(rng, (e, n, d), mx.bfloat16, bits, gs, mode)
    idx = random_indices(rng, (t,), k, e)
    got = run_kernel(moe.gather_qmv_swiglu, x, *wg, *wu, idx, gs, bits, mode)
    ix = np.array(idx)
    g = experts64(f64(x), deq64(*wg, gs, bits, mode), ix)
    u = experts64(f64(x), deq64(*wu, gs, bits, mode), ix)
    close(got, g / (1 + np.exp(-g)) * u, mx.bfloat16)


@pytest.mark.parametrize("name", ["a4g64", "mxfp4"])
def test_gather_qmv_swiglu_oai_float64(name, rng):
    """GPT-OSS: gate clipped above at 7, up clipped to [-7, 7], per-expert biases."""
    gs, bits, mode = fmt(name)
    e, k, t, d, n = 4, 4, 3, 64, 16
    x = random_x(rng, (t, d), mx.float16) * 6.0
    wg = random_qweight(rng, (e, n, d), mx.float16, bits, gs, mode)
    wu = random_qweight(rng, (e, n, d), mx.float16, bits, gs, mode)
    bg, bu = random_x(rng, (e, n), mx.float16), random_x(rng, (e, n), mx.float16)
    idx = random_indices(rng, (t,), k, e)
    got = run_kernel(moe.gather_qmv_swiglu_oai, x, *wg, *wu, idx, gs, bits, mode, bg, bu)
    ix = np.array(idx)
    g = experts64(f64(x), deq64(*wg, gs, bits, mode), ix) + f64(bg)[ix]
    u = experts64(f64(x), deq64(*wu, gs, bits, mode), ix) + f64(bu)[ix]
    assert (g > 7).any() and (np.abs(u) > 7).any(), "inputs should reach the clamps"
    g, u = np.minimum(g, 7.0), np.clip(u, -7.0, 7.0)
    close(got, (u + 1) * g / (1 + np.exp(-1.702 * g)), mx.float16, scale=4.0)


@pytest.mark.parametrize("per_slot", [False, True], ids=["x-per-token", "x-per-slot"])
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16], ids=["f32", "f16", "bf16"])
def test_gather_qmv_float64(dtype, per_slot, rng):
    gs, bits, mode = fmt("a8g64")
    e, k, t, d, n = 5, 3, 4, 128, 33
    x = random_x(rng, (t, k, d) if per_slot else (t, d), dtype)
    w = random_qweight(rng, (e, n, d), dtype, bits, gs, mode)
    bias = random_x(rng, (e, n), dtype)
    idx = random_indices(rng, (t,), k, e)
    got = run_kernel(moe.gather_qmv, x, *w, idx, gs, bits, mode, bias)
    ix = np.array(idx)
    close(got, experts64(f64(x), deq64(*w, gs, bits, mode), ix) + f64(bias)[ix], dtype)


@pytest.mark.parametrize("t", [1, 4, 16])
@pytest.mark.parametrize("name", KERNEL_FORMATS)
def test_gather_qmv_combine_float64(name, t, rng):
    gs, bits, mode = fmt(name)
    e, k, i_dim, d = 6, 4, 128, 40
    h = random_x(rng, (t, k, i_dim), mx.bfloat16)
    w = random_qweight(rng, (e, d, i_dim), mx.bfloat16, bits, gs, mode)
    idx, wts = random_indices(rng, (t,), k, e), random_weights(rng, (t,), k, mx.bfloat16)
    got = run_kernel(moe.gather_qmv_combine, h, *w, idx, wts, gs, bits, mode)
    y = experts64(f64(h), deq64(*w, gs, bits, mode), np.array(idx))
    close(got, (y * f64(wts)[..., None]).sum(1), mx.bfloat16)


def test_gather_qmv_combine_bias_and_shared_expert(rng):
    gs, bits, mode = fmt("a4g32")
    e, k, t, i_dim, d = 4, 2, 3, 64, 24
    dtype = mx.float16
    h = random_x(rng, (t, k, i_dim), dtype)
    w = random_qweight(rng, (e, d, i_dim), dtype, bits, gs, mode)
    idx, wts = random_indices(rng, (t,), k, e), random_weights(rng, (t,), k, mx.float32)
    bias, shared = random_x(rng, (e, d), dtype), random_x(rng, (t, d), dtype)
    gate = random_x(rng, (t, 1), dtype)
    ix = np.array(idx)
    y = experts64(f64(h), deq64(*w, gs, bits, mode), ix) + f64(bias)[ix]
    comb = (y * f64(wts)[..., None]).sum(1)
    got = run_kernel(moe.gather_qmv_combine, h, *w, idx, wts, gs, bits, mode, bias, shared)
    close(got, comb + f64(shared), dtype)
    got = run_kernel(moe.gather_qmv_combine, h, *w, idx, wts, gs, bits, mode, bias, shared, gate)
    close(got, comb + f64(shared) / (1 + np.exp(-f64(gate))), dtype)


def _sequential_model(y, w, p_dtype):
    """MLX's CUDA rounding of ``(y * w[..., None]).sum(-2)`` for contiguous y, K <= 32:
    products rounded to the promoted dtype, summed in order in that dtype."""
    with mx.stream(mx.cpu):
        prod = y.astype(p_dtype) * w.astype(p_dtype)[..., None]
        acc = prod[..., 0, :]
        for j in range(1, y.shape[-2]):
            acc = acc + prod[..., j, :]
        return acc.astype(y.dtype)


@pytest.mark.parametrize(
    "ydt,wdt",
    [(mx.bfloat16, mx.bfloat16), (mx.bfloat16, mx.float32), (mx.float16, mx.float16),
     (mx.float32, mx.float32)],
    ids=["qwen3-bf16-scores", "glm4-f32-scores", "f16", "f32"],
)  # fmt: skip
def test_moe_combine_exact_rounding_model(ydt, wdt, rng):
    """The kernel implements the rounding model bit for bit (the model itself is MLX's CUDA
    column reduce; test_moe_combine_exact_is_bitwise_on_cuda checks it against MLX)."""
    y = random_x(rng, (3, 8, 256), ydt)
    w = random_weights(rng, (3,), 8, wdt)
    got = run_kernel(moe.moe_combine_exact, y, w)
    assert mx.array_equal(got, _sequential_model(y, w, promote((ydt, wdt)))).item()


@pytest.mark.cuda
@pytest.mark.parametrize("wdt", [mx.bfloat16, mx.float32], ids=["bf16-scores", "f32-scores"])
@pytest.mark.parametrize("t", [1, 4, 16])
def test_moe_combine_exact_is_bitwise_on_cuda(t, wdt, rng):
    y = random_x(rng, (t, 8, 2048), mx.bfloat16)
    w = random_weights(rng, (t,), 8, wdt)
    got = moe.moe_combine_exact(y, w)
    assert mx.array_equal(got, moe.moe_combine_exact_ref(y, w)).item()


def test_moe_combine_float32_accumulation(rng):
    y = random_x(rng, (2, 16, 300), mx.bfloat16) * 100.0
    w = random_weights(rng, (2,), 16, mx.bfloat16)
    got = run_kernel(moe.moe_combine, y, w)
    want = (f64(y) * f64(w)[..., None]).sum(1)
    close(got, want, mx.bfloat16, scale=100.0)
    sh, g = random_x(rng, (2, 300), mx.bfloat16), random_x(rng, (2, 1), mx.bfloat16)
    got = run_kernel(moe.moe_combine_shared, y, w, sh, g)
    close(got, want + f64(sh) / (1 + np.exp(-f64(g))), mx.bfloat16, scale=100.0)


def test_errors(rng):
    gs, bits, mode = fmt("a4g64")
    w = random_qweight(rng, (4, 16, 64), mx.bfloat16, bits, gs, mode)
    x = random_x(rng, (2, 64), mx.bfloat16)
    idx = random_indices(rng, (2,), 2, 4)
    with pytest.raises(ValueError, match=r"\[gather_qmv\] expected 'w' to be a 3-d uint32"):
        moe.gather_qmv(x, w[0][0], w[1][0], w[2][0], idx)
    with pytest.raises(ValueError, match=r"\[gather_qmv\] expected indices of shape"):
        moe.gather_qmv(x, *w, idx[:1])
    with pytest.raises(TypeError, match=r"\[gather_qmv\] expected integer expert 'indices'"):
        moe.gather_qmv(x, *w, idx.astype(mx.float32))
    with pytest.raises(ValueError, match=r"\[gather_qmv_swiglu\] expected activation"):
        moe.gather_qmv_swiglu(x, *w, *w, idx, activation="gelu")
    with pytest.raises(ValueError, match=r"\[gather_qmv_swiglu\] expected both bias_gate"):
        moe.gather_qmv_swiglu(x, *w, *w, idx, bias_gate=random_x(rng, (4, 16), mx.bfloat16))
    h = random_x(rng, (2, 2, 64), mx.bfloat16)
    wd = random_qweight(rng, (4, 16, 64), mx.bfloat16, bits, gs, mode)
    wts = random_weights(rng, (2,), 2, mx.bfloat16)
    with pytest.raises(ValueError, match=r"\[gather_qmv_combine\] expected 'shared'"):
        moe.gather_qmv_combine(h, *wd, idx, wts, shared_gate=random_x(rng, (2, 1), mx.bfloat16))
    with pytest.raises(ValueError, match=r"\[gather_qmv_combine\] expected 'weights' of shape"):
        moe.gather_qmv_combine(h, *wd, idx, wts[:, :1])
    with pytest.raises(ValueError, match=r"\[moe_combine\] expected 'y' of shape"):
        moe.moe_combine(random_x(rng, (8,), mx.bfloat16), wts)


@pytest.mark.no_emulate  # under the emulator the kernel path runs, not the CPU reference
def test_reference_path_on_cpu_matches_stock(rng):
    """Off the GPU every op is its reference: the stock mlx-lm computation."""
    gs, bits, mode = fmt("a4g64")
    x = random_x(rng, (2, 64), mx.bfloat16)
    wg, wu = (random_qweight(rng, (4, 16, 64), mx.bfloat16, bits, gs, mode) for _ in range(2))
    idx = random_indices(rng, (2,), 2, 4)
    with mx.stream(mx.cpu):
        got = moe.gather_qmv_swiglu(x, *wg, *wu, idx)
        xs = x[:, None, None, :]
        g = mx.gather_qmm(xs, *wg, rhs_indices=idx, transpose=True).squeeze(-2)
        u = mx.gather_qmm(xs, *wu, rhs_indices=idx, transpose=True).squeeze(-2)
        assert mx.array_equal(got, g * mx.sigmoid(g) * u).item()


@pytest.mark.parametrize("model", list(MODELS))
def test_real_decode_shapes_compile(model):
    """gather_qmv_swiglu + gather_qmv_combine at each model's decode shape (T = 16), zero
    weights: NVRTC when available, and the Metal shim."""
    d, i_dim, e, k, name = MODELS[model]
    gs, bits, mode = fmt(name)
    sdt = mx.uint8 if mode == "mxfp4" else mx.bfloat16

    def q(n, m):
        w = mx.zeros((e, n, m * bits // 32), dtype=mx.uint32)
        s = mx.zeros((e, n, m // gs), dtype=sdt)
        return w, s, (None if mode == "mxfp4" else mx.zeros((e, n, m // gs), dtype=sdt))

    x = mx.zeros((16, d), dtype=mx.bfloat16)
    idx = mx.zeros((16, k), dtype=mx.uint32)
    wts = mx.zeros((16, k), dtype=mx.bfloat16)
    assert_compiles(moe.moe_experts, x, *q(i_dim, d), *q(i_dim, d), *q(d, i_dim), idx, wts, gs,
                    bits, mode)  # fmt: skip


def gelu64(g, approximate):
    if approximate == "tanh":
        return 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
    return 0.5 * g * (1 + np.vectorize(math.erf)(g / np.sqrt(2)))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("name", ["a4g64", "a8g32", "mxfp4"])
def test_gather_qmv_geglu_float64(name, approximate, rng):
    """Gemma 4's experts: gelu_approx(g) * u (and the erf GELU), float32 so the two differ."""
    gs, bits, mode = fmt(name)
    e, k, t, d, n = 6, 4, 3, 128, 24
    x = random_x(rng, (t, d), mx.float32)
    wg = random_qweight(rng, (e, n, d), mx.float32, bits, gs, mode)
    wu = random_qweight(rng, (e, n, d), mx.float32, bits, gs, mode)
    idx = random_indices(rng, (t,), k, e)
    got = run_kernel(moe.gather_qmv_geglu, x, *wg, *wu, idx, gs, bits, mode, None, None,
                     approximate)  # fmt: skip
    ix = np.array(idx)
    g = experts64(f64(x), deq64(*wg, gs, bits, mode), ix)
    u = experts64(f64(x), deq64(*wu, gs, bits, mode), ix)
    close(got, gelu64(g, approximate) * u, mx.float32)
    other = gelu64(g, "none" if approximate == "tanh" else "tanh") * u
    assert np.abs(np.array(got) - other).max() > 1e-5, "the other GELU form would pass too"
