"""The batched row loop of the quantized matvec kernels (``quant_kernels.BATCH_LOADS``), and
its 16-byte weight loads (``quant_kernels.LOAD_WORDS = 4``).

Each lane loads all its words of a row (with their scales and biases) before the math, and
the down-projection kernel loads a token's expert ids and weights before its expert loop. The
operations and their order are unchanged, so every op gives bit-identical results with it on
and off (kernels on the CPU SIMT emulator), in every format, dtype and the awkward shapes:
a row length whose words do not fill the last round of lanes, rows not a multiple of R, and
rows longer than the register-held x (streamed). The batched kernels also compile (NVRTC
for sm_90a where available, and the Metal shim).

With 16-byte loads a lane owns four consecutive words per load instead of one word every 32,
so the float32 sums run in another order: those results are compared with the word-load
kernels within a few units in the last place of the output dtype, on the same shapes (whose
rows leave lanes idle in the last round of loads).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, zero_experts
from test_quant import fmt, run_kernel
from zmlx.kernels import moe, quant
from zmlx.kernels import moe_kernels as mk
from zmlx.kernels import quant_kernels as qk
from zmlx.kernels.moe_specs import random_indices
from zmlx.kernels.quant_specs import random_qweight, random_x

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
IDS = ["f32", "f16", "bf16"]


def both(monkeypatch, fn, *args, attr="BATCH_LOADS", values=(False, True), module=qk, **kw):
    """``fn`` on the emulator with the plain and the batched row loop (or two other values
    of a setting of ``module``, ``quant_kernels`` by default)."""
    out = []
    for v in values:
        monkeypatch.setattr(module, attr, v)
        out.append(run_kernel(fn, *args, **kw))
    return out


def wide(monkeypatch, fn, *args, **kw):
    """``fn`` with word loads and with 16-byte loads."""
    return both(monkeypatch, fn, *args, attr="LOAD_WORDS", values=(1, 4), **kw)


# Float32 sums in another order, then rounded to the output dtype.
RTOL = {mx.float32: 2e-5, mx.float16: 4e-3, mx.bfloat16: 3e-2}


def assert_close(a, b):
    for x, y in zip(a if isinstance(a, (list, tuple)) else [a],
                    b if isinstance(b, (list, tuple)) else [b]):  # fmt: skip
        assert x.dtype == y.dtype and x.shape == y.shape
        x32, y32 = np.array(x.astype(mx.float32)), np.array(y.astype(mx.float32))
        scale = max(1.0, float(np.abs(x32).max()))
        np.testing.assert_allclose(x32, y32, rtol=RTOL[x.dtype], atol=RTOL[x.dtype] * scale)


def assert_identical(a, b):
    for x, y in zip(a if isinstance(a, (list, tuple)) else [a],
                    b if isinstance(b, (list, tuple)) else [b]):  # fmt: skip
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(np.array(x.astype(mx.float32)), np.array(y.astype(mx.float32)),
                              equal_nan=True)  # fmt: skip


@pytest.fixture(autouse=True)
def _word_kernels(monkeypatch):
    """These kernels are what the tile kernel replaces where it applies (TILE): off here."""
    monkeypatch.setattr(qk, "TILE", False)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name", ["a4g64", "a8g32", "a4g128", "mxfp4"])
@pytest.mark.parametrize("d, n", [(256, 24), (320, 13)])
def test_dense_ops_identical(name, d, n, dtype, monkeypatch, rng):
    gs, bits, mode = fmt(name)
    if d % gs:
        pytest.skip("row length not a multiple of the group size")
    x = random_x(rng, (3, d), dtype)
    w = random_qweight(rng, (n, d), dtype, bits, gs, mode)
    w2 = random_qweight(rng, (n, d), dtype, bits, gs, mode)
    assert_identical(*both(monkeypatch, quant.qmv, x, *w, gs, bits, mode))
    assert_identical(*both(monkeypatch, quant.qmv_swiglu, x, *w, *w2, gs, bits, mode))
    res = random_x(rng, (3, n), dtype)
    assert_identical(*both(monkeypatch, quant.qmv_residual, x, *w, res, gs, bits, mode))
    wk = random_qweight(rng, (8, d), dtype, bits, gs, mode)
    assert_identical(*both(monkeypatch, quant.qkv_proj, x, *w, *wk, *wk, gs, bits, mode))


def _experts(rng, name, t, dtype):
    """``t`` tokens, 6 experts (4 a token) of 192 inputs and 64 rows, router weights."""
    gs, bits, mode = fmt(name)
    e, k, d, n = 6, 4, 192, 64
    x = random_x(rng, (t, d), dtype)
    wg, wu = (random_qweight(rng, (e, n, d), dtype, bits, gs, mode) for _ in range(2))
    wd = random_qweight(rng, (e, d, n), dtype, bits, gs, mode)
    idx = random_indices(rng, (t,), k, e)
    wts = mx.softmax(random_x(rng, (t, k), mx.float32), axis=-1).astype(dtype)
    return d, x, wg, wu, wd, idx, wts


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name", ["a4g64", "a8g64", "mxfp4"])
@pytest.mark.parametrize("t", [1, 3])
def test_expert_ops_identical(name, t, dtype, monkeypatch, rng):
    monkeypatch.setattr(mk, "SPLIT_EXPERTS", False)  # the one-warp combine kernel
    gs, bits, mode = fmt(name)
    d, x, wg, wu, wd, idx, wts = _experts(rng, name, t, dtype)
    h = both(monkeypatch, moe.gather_qmv_swiglu, x, *wg, *wu, idx, gs, bits, mode)
    assert_identical(*h)
    assert_identical(*both(monkeypatch, moe.gather_qmv, x, *wg, idx, gs, bits, mode))
    shared = random_x(rng, (t, d), dtype)
    assert_identical(*both(monkeypatch, moe.gather_qmv_combine, h[0], *wd, idx, wts, gs, bits,
                           mode, shared=shared))  # fmt: skip


def test_streamed_rows(monkeypatch, rng):
    """Rows longer than the register-held x (the lane reads x per word): the batched row loop
    is identical, 16-byte loads are close."""
    gs, bits, mode = fmt("a8g64")
    d = qk.X_REG_MAX + 128
    x = random_x(rng, (1, d), mx.bfloat16)
    w = random_qweight(rng, (5, d), mx.bfloat16, bits, gs, mode)
    assert_identical(*both(monkeypatch, quant.qmv, x, *w, gs, bits, mode))
    assert_close(*wide(monkeypatch, quant.qmv, x, *w, gs, bits, mode))


@pytest.mark.parametrize("words", [1, 4])
def test_qwen3_decode_shapes_compile(words, monkeypatch):
    monkeypatch.setattr(qk, "BATCH_LOADS", True)
    monkeypatch.setattr(qk, "LOAD_WORDS", words)
    monkeypatch.setattr(qk, "SPLIT_WARPS", 0)  # the one-warp-a-row kernels
    monkeypatch.setattr(mk, "SPLIT_EXPERTS", False)
    d, i_dim, e, k = 2048, 768, 128, 8
    gs, bits, mode = 64, 4, "affine"

    def q(n, m):
        return zero_experts(e, n, m, bits, gs)

    x = mx.zeros((1, d), dtype=mx.bfloat16)
    idx = mx.zeros((1, k), dtype=mx.uint32)
    wts = mx.zeros((1, k), dtype=mx.bfloat16)

    def block(x):
        h = moe.gather_qmv_swiglu(x, *q(i_dim, d), *q(i_dim, d), idx, gs, bits, mode)
        return moe.gather_qmv_combine(h, *q(d, i_dim), idx, wts, gs, bits, mode)

    assert_compiles(block, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name", ["a4g64", "a8g32", "a4g128", "mxfp4"])
def test_dense_ops_with_16_byte_loads(name, dtype, monkeypatch, rng):
    gs, bits, mode = fmt(name)
    d, n = 384, 13  # 48 or 96 words a row: the last round of loads leaves lanes idle
    x = random_x(rng, (3, d), dtype)
    w = random_qweight(rng, (n, d), dtype, bits, gs, mode)
    w2 = random_qweight(rng, (n, d), dtype, bits, gs, mode)
    assert_close(*wide(monkeypatch, quant.qmv, x, *w, gs, bits, mode))
    assert_close(*wide(monkeypatch, quant.qmv_swiglu, x, *w, *w2, gs, bits, mode))
    wk = random_qweight(rng, (8, d), dtype, bits, gs, mode)
    assert_close(*wide(monkeypatch, quant.qkv_proj, x, *w, *wk, *wk, gs, bits, mode))


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", ["a4g64", "a8g64", "mxfp4"])
def test_expert_ops_with_16_byte_loads(name, dtype, monkeypatch, rng):
    monkeypatch.setattr(mk, "SPLIT_EXPERTS", False)  # the one-warp combine kernel
    gs, bits, mode = fmt(name)
    t = 3
    d, x, wg, wu, wd, idx, wts = _experts(rng, name, t, dtype)
    h = wide(monkeypatch, moe.gather_qmv_swiglu, x, *wg, *wu, idx, gs, bits, mode)
    assert_close(*h)
    assert_close(*wide(monkeypatch, moe.gather_qmv_combine, h[0], *wd, idx, wts, gs, bits,
                       mode, shared=random_x(rng, (t, d), dtype)))  # fmt: skip


def test_load_words_only_where_rows_are_whole_loads(monkeypatch):
    monkeypatch.setattr(qk, "LOAD_WORDS", 4)
    assert qk.load_plan(2048, 4) == (True, 4)
    assert qk.load_plan(40, 8) == (qk.BATCH_LOADS, 1)  # 10 words a row
    monkeypatch.setattr(qk, "LOAD_WORDS", 1)
    assert qk.load_plan(2048, 4) == (qk.BATCH_LOADS, 1)
    with pytest.raises(ValueError, match="16-byte loads need the batched row loop"):
        qk._row_loop("affine", [("w0", "s0", "b0")], "N", "0", True, "acc", False, 4)
    # two words a load has no kernel form (a 16-byte load at 8-byte alignment faulted on an
    # H100): refused before any launch
    monkeypatch.setattr(qk, "LOAD_WORDS", 2)
    with pytest.raises(ValueError, match=r"\[quant_kernels\] expected LOAD_WORDS 1 or 4, got 2"):
        qk.load_plan(2048, 4)
