"""The tile matvec kernel (``quant_kernels.TILE``): 16-byte weight loads, x staged in shared
memory, every weight load of a warp's rows issued before the math.

It sums each 16-byte chunk of a row before adding it to the row's sum, so its float32 sums
run in another order than the one-word kernels': every op that takes it is compared with the
one-word kernel within a few units in the last place of the output dtype (kernels on the CPU
SIMT emulator, or the GPU), in every kernel format and dtype, dense and gathered, with
awkward shapes: rows whose chunks leave lanes idle (24 chunks for 32 lanes), row counts
that leave a group's last warps past the end, and several tokens, and against float64.
The tile is off by default (slower on an H100, see ``quant_kernels.TILE``); it is on here.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, zero_experts
from test_batched_loads import DTYPES, IDS, assert_close, both
from test_quant import deq64, f64, fmt, run_kernel
from zmlx.core.kernel import capture
from zmlx.kernels import moe, quant
from zmlx.kernels import quant_kernels as qk
from zmlx.kernels.moe_specs import random_indices
from zmlx.kernels.quant_specs import random_qweight, random_x


@pytest.fixture(autouse=True)
def _tile_on(monkeypatch):
    monkeypatch.setattr(qk, "TILE", True)


def tiled(monkeypatch, fn, *args, **kw):
    """``fn`` with the one-word kernels and with the tile kernel."""
    return both(monkeypatch, fn, *args, attr="TILE", values=(False, True), **kw)


def tile_launched(fn, *args, **kw) -> bool:
    with capture("cuda") as launches:
        fn(*args, **kw)
    return any(launch.kernel.name.endswith("_tile") for launch in launches)


# (format, d): every kernel format's rows are whole 16-byte chunks (VW = 4). d = 256: lanes
# of 2 chunks (4 bits) or 4 (8 bits); 768: 24 chunks, 8 lanes idle; 352 at group 32: 11 chunks.
SHAPES = [("a4g64", 256), ("a4g64", 768), ("a8g64", 256), ("mxfp4", 256), ("a4g32", 352),
          ("a4g128", 384), ("a8g32", 96)]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, d", SHAPES)
@pytest.mark.parametrize("t", [1, 3])
def test_dense_tile_matches_one_word_kernel(name, d, t, dtype, monkeypatch, rng):
    gs, bits, mode = fmt(name)
    n = 37  # groups of 4 warps x R rows: the last group's last warps have no rows
    assert qk.tile_plan(d, bits, gs, 1, n, t)[0] == 4
    x = random_x(rng, (t, d), dtype)
    w = random_qweight(rng, (n, d), dtype, bits, gs, mode)
    w2 = random_qweight(rng, (n, d), dtype, bits, gs, mode)
    assert tile_launched(quant.qmv, x, *w, gs, bits, mode)
    assert_close(*tiled(monkeypatch, quant.qmv, x, *w, gs, bits, mode))
    assert_close(*tiled(monkeypatch, quant.qmv_swiglu, x, *w, *w2, gs, bits, mode))
    res = random_x(rng, (t, n), dtype)
    assert_close(*tiled(monkeypatch, quant.qmv_residual, x, *w, res, gs, bits, mode))
    bias = random_x(rng, (n,), dtype)
    assert_close(*tiled(monkeypatch, quant.qmv_bias, x, *w, bias, gs, bits, mode))
    wk = random_qweight(rng, (8, d), dtype, bits, gs, mode)
    assert_close(*tiled(monkeypatch, quant.qkv_proj, x, *w, *wk, *wk, gs, bits, mode))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name, d", [("a4g64", 256), ("a8g64", 192), ("mxfp4", 768)])
@pytest.mark.parametrize("t", [1, 3])
def test_gathered_tile_matches_one_word_kernel(name, d, t, dtype, monkeypatch, rng):
    gs, bits, mode = fmt(name)
    monkeypatch.setattr(qk, "MMA_GATE_UP", False)  # gate/up on the tile kernel
    e, k, n = 6, 4, 21
    x = random_x(rng, (t, d), dtype)
    wg = random_qweight(rng, (e, n, d), dtype, bits, gs, mode)
    wu = random_qweight(rng, (e, n, d), dtype, bits, gs, mode)
    idx = random_indices(rng, (t,), k, e)
    assert tile_launched(moe.gather_qmv_swiglu, x, *wg, *wu, idx, gs, bits, mode)
    assert_close(*tiled(monkeypatch, moe.gather_qmv_swiglu, x, *wg, *wu, idx, gs, bits, mode))
    assert_close(*tiled(monkeypatch, moe.gather_qmv, x, *wg, idx, gs, bits, mode))
    xs = random_x(rng, (t, k, d), dtype)  # one x row per slot
    assert_close(*tiled(monkeypatch, moe.gather_qmv, xs, *wg, idx, gs, bits, mode))
    bias = random_x(rng, (e, n), dtype)
    assert_close(*tiled(monkeypatch, moe.gather_qmv, x, *wg, idx, gs, bits, mode, bias=bias))
    if mode == "mxfp4":  # GPT-OSS: clipped SwiGLU with per-expert biases
        bu = random_x(rng, (e, n), dtype)
        assert_close(*tiled(monkeypatch, moe.gather_qmv_swiglu_oai, x, *wg, *wu, idx, gs, bits,
                            mode, bias_gate=bias, bias_up=bu))  # fmt: skip


def test_tile_against_float64(rng):
    gs, bits, mode = fmt("a4g64")
    x = random_x(rng, (2, 768), mx.float32)
    w, s, b = random_qweight(rng, (50, 768), mx.float32, bits, gs, mode)
    got = run_kernel(quant.qmv, x, w, s, b, gs, bits, mode)
    want = f64(x) @ deq64(w, s, b, gs, bits, mode).T
    np.testing.assert_allclose(np.array(got), want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def test_tile_plan(monkeypatch):
    assert qk.tile_plan(2048, 4, 64, 1, 4096, 1) == (4, 4)  # q_proj: 1024 warps at R = 4
    assert qk.tile_plan(2048, 4, 64, 2, 768, 8) == (4, 4)  # gate/up of 8 experts: 1536 warps
    assert qk.tile_plan(2048, 4, 64, 1, 512, 1) == (4, 1)  # k_proj: too few rows for R > 1
    assert qk.tile_plan(4096, 4, 64, 1, 2048, 1) == (4, 2)  # o_proj: 4 chunks a lane
    assert qk.tile_plan(2048, 8, 64, 1, 128, 1) == (4, 1)  # 8-bit router
    assert qk.tile_plan(16384, 4, 64, 1, 4096, 1) is None  # x does not fit shared memory
    assert qk.tile_plan(8192, 4, 64, 2, 4096, 1) == (4, 1)  # 2 weights, 8 chunks a lane
    monkeypatch.setattr(qk, "TILE_MAX_WORDS", 32)
    assert qk.tile_plan(8192, 4, 64, 2, 4096, 1) is None  # a lane would hold 64 words
    monkeypatch.setattr(qk, "TILE", False)
    assert qk.tile_plan(2048, 4, 64, 1, 4096, 1) is None
    with pytest.raises(ValueError, match="no tile kernel"):
        qk.tile_matvec_kernel("nope", "affine", False, False, False, False)


def test_qwen3_shapes_compile():
    d, i_dim, e, k, gs, bits = 2048, 768, 128, 8, 64, 4
    x = mx.zeros((1, d), dtype=mx.bfloat16)
    idx = mx.zeros((1, k), dtype=mx.uint32)
    g, u = zero_experts(e, i_dim, d, bits, gs), zero_experts(e, i_dim, d, bits, gs)
    assert_compiles(lambda x: moe.gather_qmv_swiglu(x, *g, *u, idx, gs, bits, "affine"), x,
                    only="tile")  # fmt: skip
    wq = tuple(a[0] for a in zero_experts(1, 4096, d, bits, gs))
    wk = tuple(a[0] for a in zero_experts(1, 512, d, bits, gs))
    assert_compiles(lambda x: quant.qkv_proj(x, *wq, *wk, *wk, gs, bits, "affine"), x,
                    only="tile")  # fmt: skip
    wo = tuple(a[0] for a in zero_experts(1, 2048, 4096, bits, gs))
    xo = mx.zeros((1, 4096), dtype=mx.bfloat16)
    assert_compiles(lambda x: quant.qmv(x, *wo, gs, bits, "affine"), xo, only="tile")
