"""gather_add / scatter_add: float64 oracles, duplicates, float32 accumulation, wrapping and
out-of-range indices, gradients, the atomic kernel on the emulator."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, emulator
from zmlx.kernels.indexing import gather_add, gather_add_ref, scatter_add, scatter_add_ref
from zmlx.testing import assert_close, check_grad


def _x(rng, shape, dtype=mx.float32):
    return mx.array(rng.normal(size=shape).astype(np.float32)).astype(dtype)


def _np(a):
    return np.array(a.astype(mx.float32), dtype=np.float64)


def test_gather_add_matches_numpy(rng):
    table, idx = _x(rng, (10, 3, 4)), mx.array([[3, -1], [0, 3]], dtype=mx.int32)
    base = _x(rng, (2, 2, 3, 4))
    want = _np(base) + _np(table)[np.array(idx) % 10]
    assert_close(gather_add(base, table, idx), mx.array(want.astype(np.float32)))


def test_scatter_add_accumulates_duplicates(rng):
    base, upd = _x(rng, (6, 5)), _x(rng, (50, 5))
    idx = mx.array(rng.integers(-6, 6, size=50).astype(np.int64))
    want = _np(base)
    np.add.at(want, np.array(idx) % 6, _np(upd))
    assert_close(scatter_add(base, idx, upd), mx.array(want.astype(np.float32)), atol=1e-5)


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16], ids=["f16", "bf16"])
def test_half_precision_sums_in_float32(dtype):
    base = mx.zeros((2, 4), dtype=dtype)
    upd = mx.full((2000, 4), 0.01, dtype=dtype)
    idx = mx.zeros((2000,), dtype=mx.int32)
    y = scatter_add(base, idx, upd)
    assert y.dtype == dtype
    exact = 2000 * float(mx.array(0.01, dtype=dtype).astype(mx.float32))
    assert abs(float(y[0, 0].astype(mx.float32)) - exact) <= 0.01 * exact
    assert float(y[1].abs().max()) == 0.0


def test_gradients_are_each_others_op(rng):
    table, base = _x(rng, (7, 6)), _x(rng, (3, 4, 6))
    idx = mx.array(rng.integers(-7, 7, size=(3, 4)).astype(np.int32))
    check_grad(gather_add, gather_add_ref, [base, table, idx], argnums=[0, 1])
    upd = _x(rng, (3, 4, 6))
    check_grad(scatter_add, scatter_add_ref, [table, idx, upd], argnums=[0, 2])


def test_kernels_on_the_emulator_with_duplicates_and_out_of_range(rng):
    table, upd = _x(rng, (5, 33), mx.bfloat16), _x(rng, (40, 33), mx.bfloat16)
    idx = mx.array(rng.integers(-5, 5, size=40).astype(np.int32))
    bad = mx.array([7, -6, 2], dtype=mx.int32)  # outside [-5, 5): read zeros, write nothing
    with emulator():
        s = scatter_add(table, idx, upd)
        g = gather_add(upd[:3], table, bad)
        gt = mx.grad(lambda t: (gather_add(upd, t, idx).astype(mx.float32) ** 2).sum())(table)
        mx.eval(s, g, gt)
    assert_close(s, scatter_add_ref(table, idx, upd), atol=2e-2, rtol=2e-2)
    assert_close(g[:2], upd[:2], atol=0, rtol=0)
    assert_close(g[2], (upd[2].astype(mx.float32) + table[2]).astype(mx.bfloat16), atol=0, rtol=0)
    want = mx.grad(lambda t: (gather_add_ref(upd, t, idx).astype(mx.float32) ** 2).sum())(table)
    assert_close(gt, want, atol=0.1, rtol=0.03)


@pytest.mark.no_emulate  # captures launches instead of running them
def test_backward_scatter_compiles(rng):
    table, base = _x(rng, (9, 16), mx.float16), _x(rng, (4, 16), mx.float16)
    idx = mx.array([1, 1, -2, 0], dtype=mx.int32)
    grad = mx.grad(lambda t: gather_add(base, t, idx).astype(mx.float32).sum())
    assert_compiles(grad, table, only="scatter")


def test_errors():
    t, i = mx.zeros((4, 3)), mx.zeros((2,), dtype=mx.int32)
    with pytest.raises(ValueError, match=r"\[gather_add\] expected 'base' of shape \(2, 3\)"):
        gather_add(mx.zeros((2, 4)), t, i)
    with pytest.raises(TypeError, match=r"\[scatter_add\] expected 'indices' to be an integer"):
        scatter_add(t, i.astype(mx.float32), mx.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[scatter_add\] expected 'base' with at least 2 axes"):
        scatter_add(mx.zeros((4,)), i, mx.zeros((2,)))
