"""Norms: float64 oracles, MLX's own ops, options, gradients, errors, fallbacks, kernels."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from kernel_checks import assert_compiles, emulator, launches
from zmlx.core import fallback
from zmlx.core.kernel import launch_count
from zmlx.kernels import norms
from zmlx.kernels.group_norm import group_norm, group_norm_ref
from zmlx.testing import assert_close, check_grad, tolerance

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
IDS = ["f32", "f16", "bf16"]


def _x(rng, shape, dtype=mx.float32, scale=1.0, shift=0.0):
    return mx.array((rng.normal(size=shape) * scale + shift).astype(np.float32)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape", [(3, 33), (2, 300), (1, 4097)], ids=str)
def test_norms_match_float64(shape, dtype, rng):
    x, r = _x(rng, shape, dtype, 2.0, 0.5), _x(rng, shape, dtype)
    w, b = _x(rng, shape[-1:], dtype, 0.2, 1.0), _x(rng, shape[-1:], dtype, 0.2)
    with mx.stream(mx.cpu):
        x64, w64, b64 = (a.astype(mx.float64) for a in (x, w, b))
        ms = mx.mean(x64 * x64, axis=-1, keepdims=True)
        rms = x64 * mx.rsqrt(ms + 1e-6) * w64
        xc = x64 - mx.mean(x64, axis=-1, keepdims=True)
        ln = xc * mx.rsqrt(mx.mean(xc * xc, axis=-1, keepdims=True) + 1e-6) * w64 + b64
        rms, ln = rms.astype(dtype), ln.astype(dtype)  # float64 stays on the CPU stream
        mx.eval(rms, ln)
    atol, rtol = tolerance(dtype, 2.0)
    assert_close(norms.rms_norm(x, w, 1e-6), rms, atol=atol, rtol=rtol)
    assert_close(norms.layer_norm(x, w, b, 1e-6), ln, atol=atol, rtol=rtol)
    y, h = norms.add_rms_norm(x, r, w, 1e-6)
    assert_close(h, x + r, atol=0, rtol=0)
    assert_close(y, mx.fast.rms_norm(x + r, w, 1e-6), atol=atol, rtol=rtol)


@pytest.mark.parametrize("has_w,has_b", [(False, False), (True, False), (False, True)])
def test_layer_norm_affine_options(has_w, has_b, rng):
    x = _x(rng, (4, 3, 96), mx.bfloat16, 3.0, 1.0)
    w = _x(rng, (96,), mx.bfloat16, 0.2, 1.0) if has_w else None
    b = _x(rng, (96,), mx.bfloat16, 0.2) if has_b else None
    assert_close(norms.layer_norm(x, w, b, 1e-5), mx.fast.layer_norm(x, w, b, 1e-5))
    args = [a for a in (x, w, b) if a is not None]

    def op(*a):
        it = iter(a[1:])
        return norms.layer_norm(a[0], next(it) if has_w else None, next(it) if has_b else None)

    def ref(*a):
        it = iter(a[1:])
        return norms.layer_norm_ref(a[0], next(it) if has_w else None, next(it) if has_b else None)

    check_grad(op, ref, args, atol=0.06, rtol=0.06)


def test_rms_norm_without_weight_and_mixed_weight_dtype(rng):
    x = _x(rng, (5, 64), mx.bfloat16)
    assert_close(norms.rms_norm(x, None, 1e-5), mx.fast.rms_norm(x, None, 1e-5))
    w32 = _x(rng, (64,), mx.float32, 0.1, 1.0)
    y = norms.rms_norm(x, w32)
    assert y.dtype == mx.fast.rms_norm(x, w32, 1e-5).dtype == mx.float32
    assert_close(y, mx.fast.rms_norm(x, w32, 1e-5), atol=1e-5, rtol=1e-4)
    y, h = norms.add_rms_norm(x, x.astype(mx.float32), w32)
    assert h.dtype == mx.float32 and y.dtype == mx.float32


@pytest.mark.parametrize("ln", [False, True], ids=["rms", "layer"])
def test_backward_formula_matches_float64_autodiff(ln, rng):
    x, w, g = _x(rng, (6, 40), shift=0.3), _x(rng, (40,), shift=1.0), _x(rng, (6, 40))
    dx, dw, db = norms.norm_vjp_ref(ln, x, w, g, 1e-5, ln)
    ref = norms.layer_norm_ref if ln else norms.rms_norm_ref
    with mx.stream(mx.cpu):
        args = [x.astype(mx.float64), w.astype(mx.float64)]
        args += [mx.zeros((40,), mx.float64)] if ln else []
        gd = mx.vjp(lambda *a: ref(*a, eps=1e-5), args, [g.astype(mx.float64)])[1]
        gd = [a.astype(mx.float32) for a in gd]  # float64 stays on the CPU stream
        mx.eval(gd)
    assert_close(dx, gd[0], atol=1e-5, rtol=1e-4)
    assert_close(dw, gd[1], atol=1e-5, rtol=1e-4)
    if ln:
        assert_close(db, gd[2], atol=1e-5, rtol=1e-4)


def test_add_norm_gradients_include_the_residual_output(rng):
    x, r, w = _x(rng, (3, 48)), _x(rng, (3, 48)), _x(rng, (48,), shift=1.0)
    check_grad(norms.add_rms_norm, norms.add_rms_norm_ref, [x, r, w])
    b = _x(rng, (48,))
    check_grad(norms.add_layer_norm, norms.add_layer_norm_ref, [x, r, w, b])


@pytest.mark.no_emulate  # captures launches instead of running them
def test_eps_is_a_runtime_value(rng):
    x, w = _x(rng, (2, 512)), _x(rng, (512,), shift=1.0)
    a = launches("cuda", norms.rms_norm, x, w, 1e-5)
    b = launches("cuda", norms.rms_norm, x, w, 1e-6)
    assert len(a) == len(b) == 1
    assert a[0].kernel is b[0].kernel and a[0].template == b[0].template
    big = x * 1e-3  # eps matters at this scale: results must differ
    assert not mx.allclose(norms.rms_norm(big, w, 1e-5), norms.rms_norm(big, w, 1e-2))


def test_errors():
    x = mx.ones((2, 8))
    with pytest.raises(ValueError, match=r"\[rms_norm\] expected 'weight' of shape \(8,\)"):
        norms.rms_norm(x, mx.ones((4,)))
    with pytest.raises(TypeError, match=r"\[layer_norm\] expected 'x' to be float32"):
        norms.layer_norm(mx.ones((2, 8), dtype=mx.int32))
    with pytest.raises(ValueError, match=r"\[add_rms_norm\] expected 'residual' of shape"):
        norms.add_rms_norm(x, mx.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\[rms_norm\] expected eps >= 0"):
        norms.rms_norm(x, None, -1.0)
    with pytest.raises(ValueError, match=r"\[group_norm\] expected groups > 0 dividing C=8"):
        group_norm(mx.ones((1, 4, 8)), 3)


@pytest.mark.no_emulate  # captures launches instead of running them
def test_very_long_rows_take_the_reference_path(rng):
    x = _x(rng, (1, 40000))
    before = fallback.counts().get("rms_norm", 0)
    assert launches("cuda", norms.rms_norm, x, None, 1e-5) == []
    assert fallback.counts()["rms_norm"] == before + 1
    assert_close(norms.rms_norm(x), mx.fast.rms_norm(x, None, 1e-5))


def test_empty_input():
    y, h = norms.add_layer_norm(mx.zeros((0, 8)), mx.zeros((0, 8)))
    assert y.shape == h.shape == (0, 8)


@pytest.mark.parametrize("pytorch_compatible", [True, False])
def test_group_norm_matches_mlx_nn(pytorch_compatible, rng):
    x = _x(rng, (2, 6, 5, 16), scale=2.0, shift=0.5)
    gn = nn.GroupNorm(4, 16, eps=1e-5, pytorch_compatible=pytorch_compatible)
    gn.weight, gn.bias = _x(rng, (16,), shift=1.0), _x(rng, (16,))
    want = gn(x)
    assert_close(group_norm(x, 4, gn.weight, gn.bias, 1e-5, pytorch_compatible), want)
    y = group_norm(x, 4, None, None, 1e-5, pytorch_compatible)
    assert_close(y, group_norm_ref(x, 4, None, None, 1e-5, pytorch_compatible))


# ------------------------------------------------------------------------------------------
# Kernels: every forward and backward build compiles; the emulator runs the backward.


def _grad_of(op, argnums):
    def run(*args):
        def loss(*a):
            out = op(*a)
            outs = out if isinstance(out, tuple) else (out,)
            return sum((o.astype(mx.float32) * (i + 1.5)).sum() for i, o in enumerate(outs))

        return mx.grad(loss, argnums=argnums)(*args)

    return run


@pytest.mark.no_emulate  # captures launches instead of running them
@pytest.mark.parametrize("d", [33, 257], ids=["warp", "block"])
def test_backward_kernels_compile(d, rng):
    x, r = _x(rng, (3, d), mx.bfloat16), _x(rng, (3, d), mx.bfloat16)
    w, b = _x(rng, (d,), mx.bfloat16, shift=1.0), _x(rng, (d,), mx.bfloat16)
    n = assert_compiles(_grad_of(norms.rms_norm, (0, 1)), x, w, only="vjp")
    n += assert_compiles(_grad_of(norms.add_layer_norm, (0, 1, 2, 3)), x, r, w, b, only="vjp")
    n += assert_compiles(_grad_of(lambda x: norms.layer_norm(x), 0), x, only="vjp")
    assert n > 0 or pytest.skip("no kernel checker on this machine")


@pytest.mark.parametrize("d", [40, 300], ids=["warp", "block"])
def test_backward_kernels_on_the_emulator(d, rng):
    x, r = _x(rng, (5, d), mx.float16, 2.0), _x(rng, (5, d), mx.float16)
    w, b = _x(rng, (d,), mx.float16, 0.2, 1.0), _x(rng, (d,), mx.float16, 0.2)
    with emulator():
        before = launch_count()
        check_grad(norms.add_rms_norm, norms.add_rms_norm_ref, [x, r, w], atol=8e-3, rtol=2e-2)
        check_grad(norms.layer_norm, norms.layer_norm_ref, [x, w, b], atol=8e-3, rtol=2e-2)
        assert launch_count() - before >= 4  # two forward and two backward kernels


@pytest.mark.gpu
def test_gpu_runs_forward_and_backward_kernels(rng):
    x, w = _x(rng, (4, 2048), mx.bfloat16), _x(rng, (2048,), mx.bfloat16, shift=1.0)
    before = launch_count()
    mx.eval(_grad_of(norms.rms_norm, (0, 1))(x, w))
    assert launch_count() - before >= 2


@pytest.mark.parametrize("d", [40, 300], ids=["warp", "block"])
def test_backward_units_loop_over_many_rows(d, rng, monkeypatch):
    # Few units, many rows: each unit sums dw/db partials over several rows.
    from zmlx.kernels import norm_kernels

    monkeypatch.setattr(norm_kernels, "_BWD_UNITS_BLOCK", 2)
    monkeypatch.setattr(norm_kernels, "_BWD_UNITS_WARP", 16)
    x, w, b = _x(rng, (37, d), shift=0.5), _x(rng, (d,), shift=1.0), _x(rng, (d,))
    with emulator():
        check_grad(norms.layer_norm, norms.layer_norm_ref, [x, w, b], atol=1e-4, rtol=1e-3)
        check_grad(norms.rms_norm, norms.rms_norm_ref, [x, w], atol=1e-4, rtol=1e-3)
