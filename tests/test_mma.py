"""``zx_mma_bf16``: a warp's 16x16 by 16x8 bfloat16 tile product in PTX's mma.m16n8k16
fragments (CUDA tensor cores; the CPU emulator computes the same product for the warp). Each
lane builds its fragments from plain row-major tiles by the documented layout and writes its
part of d back row-major, so a wrong index anywhere shows against numpy."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles
from zmlx.core import Kernel, emulate, syntax
from zmlx.core.backend import gpu_backend

_BODY = """
  const int g = (int)lane >> 2;
  const int q = (int)lane & 3;
  uint a[4];
  uint b[2];
  float c[4];
  float d[4];
  for (int r = 0; r < 4; ++r) {
    const int row = g + ((r & 1) ? 8 : 0);
    const int col = 2 * q + ((r & 2) ? 8 : 0);
    a[r] = (zx_as_uint(A[row * 16 + col]) >> 16) | (zx_as_uint(A[row * 16 + col + 1]) & 0xFFFF0000u);
  }
  for (int r = 0; r < 2; ++r) {
    const int k = 2 * q + 8 * r;
    b[r] = (zx_as_uint(B[k * 8 + g]) >> 16) | (zx_as_uint(B[(k + 1) * 8 + g]) & 0xFFFF0000u);
  }
  for (int r = 0; r < 4; ++r) {
    c[r] = C[(g + ((r & 2) ? 8 : 0)) * 8 + 2 * q + (r & 1)];
  }
  zx_mma_bf16(d, a, b, c);
  for (int r = 0; r < 4; ++r) {
    out[(g + ((r & 2) ? 8 : 0)) * 8 + 2 * q + (r & 1)] = d[r];
  }
"""
MMA = Kernel("mma_layout", ["A", "B", "C"], ["out"], _BODY)


def _tiles(rng):
    def bf16(shape):  # values a bfloat16 holds exactly, as float32
        return mx.array(rng.standard_normal(shape).astype(np.float32)).astype(mx.bfloat16)

    return (
        bf16((16, 16)).astype(mx.float32),
        bf16((16, 8)).astype(mx.float32),
        mx.array(rng.standard_normal((16, 8)).astype(np.float32)),
    )


def _mma(a, b, c):
    return MMA(a, b, c, output_shapes=[(16, 8)], output_dtypes=[mx.float32], grid=(32, 1, 1),
               threadgroup=(32, 1, 1))[0]  # fmt: skip


def _want(a, b, c):
    return np.array(a, np.float64) @ np.array(b, np.float64) + np.array(c, np.float64)


@pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")
def test_mma_fragments_on_the_emulator(rng):
    a, b, c = _tiles(rng)
    with emulate.emulate():
        got = _mma(a, b, c)
    np.testing.assert_allclose(np.array(got), _want(a, b, c), rtol=1e-5, atol=1e-5)


needs_nvrtc = pytest.mark.skipif(
    not syntax.cuda_available(), reason="needs NVRTC, CUDA headers and ZMLX_MLX_CUDA_INCLUDE"
)


@needs_nvrtc
def test_mma_compiles_for_sm90():
    a, b, c = (mx.zeros((16, 16)), mx.zeros((16, 8)), mx.zeros((16, 8)))
    assert assert_compiles(_mma, a, b, c, backends=("cuda",)) == 1


@pytest.mark.cuda
@pytest.mark.skipif(gpu_backend() != "cuda", reason="needs MLX's CUDA backend")
def test_mma_fragments_on_the_gpu(rng):
    a, b, c = _tiles(rng)
    np.testing.assert_allclose(np.array(_mma(a, b, c)), _want(a, b, c), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")
def test_mma_needs_every_lane_of_the_warp():
    body = """
  uint a[4] = {0u, 0u, 0u, 0u};
  uint b[2] = {0u, 0u};
  float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  float d[4];
  if (lane < 16u) { zx_mma_bf16(d, a, b, c); }
  out[lid] = 1.0f;
"""
    k = Kernel("mma_divergent", ["x"], ["out"], body)
    with emulate.emulate(), pytest.raises(RuntimeError, match="not called by all 32 lanes"):
        k(mx.zeros((32,)), output_shapes=[(32,)], output_dtypes=[mx.float32], grid=(32, 1, 1),
          threadgroup=(32, 1, 1))  # fmt: skip


@pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")
@pytest.mark.parametrize("name", ["a4g64", "a4g128"])
@pytest.mark.parametrize("d, t, kind, warps", [(512, 1, "swiglu", 8), (1024, 2, "swiglu", 16),
                                               (512, 3, "geglu_tanh", 8),
                                               (1024, 2, "swiglu", 4), (768, 2, "swiglu", 4),
                                               (1024, 1, "swiglu", 2),
                                               (2048, 1, "swiglu", 2)])  # fmt: skip
def test_gate_up_on_the_tensor_cores(name, d, t, kind, warps, monkeypatch, rng):
    """``quant_kernels.MMA_GATE_UP``: the gathered gate/up with the products on the tensor
    cores (mma_kernels) against the split-row kernel, within bfloat16 last-place differences
    (float32 sums in another order), with 37 rows (the last group of 16 partly empty), one
    and several tokens, steps of 64 inputs a warp from one to 16 (a round of 3, 4 or 8
    columns, and two rounds of 8); and against float64."""
    from test_batched_loads import assert_close
    from test_quant import deq64, f64, fmt
    from zmlx.core.kernel import capture
    from zmlx.kernels import moe
    from zmlx.kernels import quant_kernels as qk
    from zmlx.kernels.moe_specs import random_indices
    from zmlx.kernels.quant_specs import random_qweight, random_x

    gs, bits, mode = fmt(name)
    e, k, i = 6, 3, 37
    x = random_x(rng, (t, d), mx.bfloat16)
    g, u = (random_qweight(rng, (e, i, d), mx.bfloat16, bits, gs, mode) for _ in range(2))
    idx = random_indices(rng, (t,), k, e)
    args = (x, *g, *u, idx, gs, bits, mode)
    monkeypatch.setattr(qk, "MMA_GATE_UP", True)
    monkeypatch.setattr(qk, "MMA_WARPS", warps)
    with capture("cuda") as caught:
        moe.gather_qmv_swiglu(*args, activation=kind)
    assert caught[0].kernel.name == f"qmv_{kind}_affine_gather_mma"
    steps = dict(caught[0].template)["STEPS"]
    assert steps == d // (64 * warps) and steps * 64 * caught[0].threadgroup[0] // 32 == d
    with emulate.emulate():
        got = moe.gather_qmv_swiglu(*args, activation=kind)
        monkeypatch.setattr(qk, "MMA_GATE_UP", False)
        split = moe.gather_qmv_swiglu(*args, activation=kind)
    assert_close(got, split)
    if kind == "swiglu":  # the projections against float64 before the activation's rounding
        gw, uw = deq64(*g, gs, bits, mode), deq64(*u, gs, bits, mode)
        xi = f64(x)
        ii = np.array(idx)
        gp = np.einsum("td,tkid->tki", xi, gw[ii])
        up = np.einsum("td,tkid->tki", xi, uw[ii])
        want = gp / (1 + np.exp(-gp)) * up
        np.testing.assert_allclose(np.array(got.astype(mx.float32)), want, rtol=5e-2, atol=5e-2)


@needs_nvrtc
def test_gate_up_on_the_tensor_cores_compiles_at_qwen3s_shape(monkeypatch):
    from zmlx.kernels import moe
    from zmlx.kernels import quant_kernels as qk

    monkeypatch.setattr(qk, "MMA_GATE_UP", True)
    from kernel_checks import zero_experts

    g = zero_experts(128, 768, 2048, 4, 64, "affine")
    idx = mx.zeros((1, 8), dtype=mx.uint32)
    assert assert_compiles(lambda x: moe.gather_qmv_swiglu(x, *g, *g, idx, 64, 4, "affine"),
                           mx.zeros((1, 2048), dtype=mx.bfloat16), backends=("cuda",)) == 1  # fmt: skip


@pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")
@pytest.mark.parametrize("i_dim, d, k, t, split, extras", [
    (256, 40, 4, 2, 2, False),   # two steps a warp, the last group of 16 rows partly empty
    (768, 32, 8, 1, 1, True),    # 12 steps: a round of 8 columns, then one of 4
    (384, 24, 4, 3, 3, True),    # 2 steps a warp, 12 warps a group
    (192, 16, 2, 1, 1, False),   # 3 steps: an odd round (scales one by one)
])  # fmt: skip
def test_combine_on_the_tensor_cores(i_dim, d, k, t, split, extras, monkeypatch, rng):
    """``mma_kernels.MMA_COMBINE``: the down projection + exact combine with each warp's
    products on the tensor cores, against the split-expert kernel (float32 sums in another
    order: bfloat16 last-place differences) and against float64, with a shared expert, its
    gate and the residual stream added where ``extras``."""
    from test_batched_loads import assert_close
    from test_quant import deq64, f64
    from zmlx.core.kernel import capture
    from zmlx.kernels import mma_kernels as mmk
    from zmlx.kernels import moe
    from zmlx.kernels.moe_specs import random_indices
    from zmlx.kernels.quant_specs import random_qweight, random_x

    e = 6
    h = random_x(rng, (t, k, i_dim), mx.bfloat16)
    w = random_qweight(rng, (e, d, i_dim), mx.bfloat16, 4, 64, "affine")
    idx = random_indices(rng, (t,), k, e)
    wts = mx.softmax(mx.array(rng.standard_normal((t, k)).astype(np.float32)), -1)
    wts = wts.astype(mx.bfloat16)
    kw = {}
    if extras:
        kw = {"shared": random_x(rng, (t, d), mx.bfloat16),
              "shared_gate": random_x(rng, (t, 1), mx.bfloat16),
              "residual": (random_x(rng, (t, d), mx.bfloat16),
                           random_x(rng, (t, d), mx.bfloat16))}  # fmt: skip
    args = (h, *w, idx, wts, 64, 4, "affine")
    monkeypatch.setattr(mmk, "MMA_COMBINE", True)
    monkeypatch.setattr(mmk, "MMA_COMBINE_SPLIT", split)
    with capture("cuda") as caught:
        moe.gather_qmv_combine(*args, **kw)
    assert [c.kernel.name for c in caught] == [
        "qmv_combine_affine_exact" + ("_res" if extras else "") + "_mma"
    ]
    assert dict(caught[0].template)["STEPS"] == i_dim // (64 * split)
    with emulate.emulate():
        got = moe.gather_qmv_combine(*args, **kw)
        monkeypatch.setattr(mmk, "MMA_COMBINE", False)
        split_out = moe.gather_qmv_combine(*args, **kw)
    assert_close(got, split_out)
    if not extras:  # the weighted sum against float64 (the kernels round each projection)
        wd = deq64(*w, 64, 4, "affine")
        y = np.einsum("tki,tkdi->tkd", f64(h), wd[np.array(idx)])
        want = np.einsum("tkd,tk->td", y, f64(wts))
        np.testing.assert_allclose(np.array(got.astype(mx.float32)), want, rtol=5e-2, atol=5e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("t", [1, 4])
@pytest.mark.parametrize("gs", [64, 128])
def test_tensor_cores_on_the_gpu(t, gs, monkeypatch, rng):
    """On the GPU, at Qwen3-30B-A3B's expert shapes (2048 inputs, 768 rows): the tensor-core
    gate/up and combine against the split-row kernels (bfloat16 last-place differences) and
    against float64, with the launches checked to be the tensor-core kernels."""
    from test_batched_loads import assert_close
    from test_quant import deq64, f64
    from zmlx.core.kernel import capture
    from zmlx.kernels import mma_kernels as mmk
    from zmlx.kernels import moe
    from zmlx.kernels import quant_kernels as qk
    from zmlx.kernels.moe_specs import random_indices
    from zmlx.kernels.quant_specs import random_qweight, random_x

    e, k, d, i = 16, 8, 2048, 768
    x = random_x(rng, (t, d), mx.bfloat16)
    g, u = (random_qweight(rng, (e, i, d), mx.bfloat16, 4, gs, "affine") for _ in range(2))
    dn = random_qweight(rng, (e, d, i), mx.bfloat16, 4, gs, "affine")
    idx = random_indices(rng, (t,), k, e)
    wts = mx.softmax(mx.array(rng.standard_normal((t, k)).astype(np.float32)), -1)
    wts = wts.astype(mx.bfloat16)
    monkeypatch.setattr(qk, "MMA_GATE_UP", True)
    monkeypatch.setattr(mmk, "MMA_COMBINE", True)
    with capture("cuda") as caught:
        h = moe.gather_qmv_swiglu(x, *g, *u, idx, gs, 4, "affine")
        moe.gather_qmv_combine(h, *dn, idx, wts, gs, 4, "affine")
    assert [c.kernel.name for c in caught] == ["qmv_swiglu_affine_gather_mma",
                                               "qmv_combine_affine_exact_mma"]  # fmt: skip
    h = moe.gather_qmv_swiglu(x, *g, *u, idx, gs, 4, "affine")
    y = moe.gather_qmv_combine(h, *dn, idx, wts, gs, 4, "affine")
    monkeypatch.setattr(qk, "MMA_GATE_UP", False)
    monkeypatch.setattr(mmk, "MMA_COMBINE", False)
    assert_close(h, moe.gather_qmv_swiglu(x, *g, *u, idx, gs, 4, "affine"))
    assert_close(y, moe.gather_qmv_combine(h, *dn, idx, wts, gs, 4, "affine"))
    gw, uw = deq64(*g, gs, 4, "affine"), deq64(*u, gs, 4, "affine")
    ii = np.array(idx)
    gp = np.einsum("td,tkid->tki", f64(x), gw[ii])
    up = np.einsum("td,tkid->tki", f64(x), uw[ii])
    want = gp / (1 + np.exp(-gp)) * up
    np.testing.assert_allclose(np.array(h.astype(mx.float32)), want, rtol=5e-2, atol=5e-2)


@pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")
@pytest.mark.parametrize("d, t, warps", [(1024, 1, 8), (512, 3, 4), (768, 2, 4)])
def test_dense_on_the_tensor_cores(d, t, warps, monkeypatch, rng):
    """``mma_kernels.MMA_DENSE``: ``qmv`` and its fused forms (bias, residual, SwiGLU) with the
    products on the tensor cores, against the split-row kernel (bfloat16 last-place
    differences), 37 rows (the last group of 16 partly empty), one step a warp or several
    (3 steps: scales one by one); ``qmv`` also against float64."""
    from test_batched_loads import assert_close
    from test_quant import deq64, f64
    from zmlx.core.kernel import capture
    from zmlx.kernels import mma_kernels as mmk
    from zmlx.kernels import quant
    from zmlx.kernels import quant_kernels as qk
    from zmlx.kernels.quant_specs import random_qweight, random_x

    n, gs = 37, 64
    x = random_x(rng, (t, d), mx.bfloat16)
    w = random_qweight(rng, (n, d), mx.bfloat16, 4, gs, "affine")
    wu = random_qweight(rng, (n, d), mx.bfloat16, 4, gs, "affine")
    bias, res = random_x(rng, (n,), mx.bfloat16), random_x(rng, (t, n), mx.bfloat16)
    calls = {"qmv_affine_mma": (quant.qmv, (x, *w, gs, 4, "affine")),
             "qmv_plain_affine_mma_bias": (quant.qmv_bias, (x, *w, bias, gs, 4, "affine")),
             "qmv_plain_affine_mma_res": (quant.qmv_residual, (x, *w, res, gs, 4, "affine")),
             "qmv_swiglu_affine_mma": (quant.qmv_swiglu, (x, *w, *wu, gs, 4, "affine"))}  # fmt: skip
    monkeypatch.setattr(qk, "MMA_WARPS", warps)
    for name, (fn, args) in calls.items():
        monkeypatch.setattr(mmk, "MMA_DENSE", True)
        with capture("cuda") as caught:
            fn(*args)
        assert caught[0].kernel.name.endswith(name.replace("qmv_affine", "qmv_plain_affine"))
        with emulate.emulate():
            got = fn(*args)
            monkeypatch.setattr(mmk, "MMA_DENSE", False)
            split = fn(*args)
        assert_close(got, split)
        if fn is quant.qmv:
            want = f64(x) @ deq64(*w, gs, 4, "affine").T
            np.testing.assert_allclose(np.array(got.astype(mx.float32)), want, rtol=3e-2,
                                       atol=3e-2)  # fmt: skip
