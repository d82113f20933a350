"""Softmax family: float64 oracles, masks (fully masked rows), extreme values, errors, and the
kernels (forward and backward) on the CPU emulator and through the compilers."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, emulator
from zmlx.core.kernel import launch_count
from zmlx.kernels import softmax as S
from zmlx.testing import assert_close, check_grad

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
SHAPES = [(1, 1), (3, 31), (2, 3, 300), (1, 4097)]


def _x(rng, shape, dtype=mx.float32, scale=2.0):
    return mx.array((rng.normal(size=shape) * scale).astype(np.float32)).astype(dtype)


def _np_softmax(z):
    m = z.max(-1, keepdims=True)
    e = np.exp(z - m)
    return e / e.sum(-1, keepdims=True)


def _np_lse(z):
    m = z.max(-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]


def _f64(x):
    return np.array(x.astype(mx.float32), dtype=np.float64)


def _check_all(x, dtype):
    z = _f64(x)
    want = {
        "softmax": _np_softmax(z),
        "log_softmax": z - _np_lse(z)[..., None],
        "scaled": _np_softmax(0.3 * z),
        "logsumexp": _np_lse(z),
    }
    got = {
        "softmax": S.softmax(x),
        "log_softmax": S.log_softmax(x),
        "scaled": S.scaled_softmax(x, 0.3),
        "logsumexp": S.logsumexp(x),
    }
    for k, g in got.items():
        assert g.dtype == dtype
        w = mx.array(want[k].astype(np.float32)).astype(dtype)
        assert_close(g, w, atol={mx.float32: 2e-6}.get(dtype), name=k)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ops_match_float64(shape, dtype, rng):
    _check_all(_x(rng, shape, dtype), dtype)


@pytest.mark.parametrize("shape", [(3, 31), (2, 300)], ids=["warp", "block"])
def test_kernels_match_float64_on_the_emulator(shape, rng):
    x = _x(rng, shape)
    with emulator():
        before = launch_count()
        _check_all(x, mx.float32)
        assert launch_count() - before == 4


def _masked_cases(rng, shape):
    x = _x(rng, shape)
    d = shape[-1]
    add = np.where(rng.uniform(size=(d,)) > 0.3, rng.normal(size=(d,)), -np.inf)
    add[0] = 0.0
    keep = rng.uniform(size=shape) > 0.4
    keep[1] = False  # a fully masked row
    keep[0, 0] = True
    return x, add.astype(np.float32), keep


def _np_masked(z, mask):
    z = np.where(np.isneginf(mask), -np.inf, z + np.where(np.isneginf(mask), 0.0, mask))
    m = z.max(-1, keepdims=True)
    m = np.where(np.isneginf(m), 0.0, m)
    e = np.where(np.isneginf(z), 0.0, np.exp(z - m))
    s = e.sum(-1, keepdims=True)
    return np.where(s > 0, e / np.where(s > 0, s, 1.0), 0.0)


@pytest.mark.parametrize("emulated", [False, True], ids=["default", "emulated"])
@pytest.mark.parametrize("shape", [(4, 37), (3, 290)], ids=["warp", "block"])
def test_masked_softmax_masks_and_fully_masked_rows(shape, emulated, rng):
    x, add, keep = _masked_cases(rng, shape)
    ctx = emulator() if emulated else _null()
    with ctx:
        y_add = S.masked_softmax(x, mx.array(add), 0.5)
        y_bool = S.masked_softmax(x, mx.array(keep))
        mx.eval(y_add, y_bool)
    z = _f64(x)
    assert_close(y_add, mx.array(_np_masked(0.5 * z, add).astype(np.float32)), atol=2e-6)
    bmask = np.where(keep, 0.0, -np.inf)
    assert_close(y_bool, mx.array(_np_masked(z, bmask).astype(np.float32)), atol=2e-6)
    # The fully masked row gives zeros, not NaN.
    assert not np.isnan(np.array(y_bool)).any()
    assert np.array(y_bool)[1].sum() == 0.0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("emulated", [False, True], ids=["default", "emulated"])
def test_masked_softmax_gradients_reach_x_and_a_broadcast_mask(emulated, rng):
    x = _x(rng, (2, 3, 40))
    mask = mx.array((rng.normal(size=(2, 1, 40)) * 0.5).astype(np.float32))
    keep = mx.array(rng.uniform(size=(2, 3, 40)) > 0.3)
    ctx = emulator() if emulated else _null()
    with ctx:
        check_grad(
            lambda a, m: S.masked_softmax(a, m, 0.7),
            lambda a, m: S.masked_softmax_ref(a, m, 0.7),
            [x, mask],
            name="float mask",
        )
        check_grad(
            lambda a: S.masked_softmax(a, keep), lambda a: S.masked_softmax_ref(a, keep), [x]
        )


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf inside assert_close
def test_extreme_values_and_nan_rows():
    big = mx.array([[1e4, -1e4, 0.0, 1e4], [-1e30, -1e30, -1e30, -1e30]])
    assert_close(S.softmax(big), mx.array([[0.5, 0.0, 0.0, 0.5], [0.25] * 4]))
    assert_close(S.logsumexp(big), mx.array([1e4 + np.log(2.0), -1e30]), rtol=1e-6)
    with_inf = mx.array([[0.0, -np.inf, 0.0]])
    assert_close(S.softmax(with_inf), mx.array([[0.5, 0.0, 0.5]]))
    assert_close(S.log_softmax(with_inf), mx.array([[-np.log(2.0), -np.inf, -np.log(2.0)]]))
    nan_row = mx.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]])
    y = np.array(S.softmax(nan_row))
    assert np.isnan(y[0]).all() and not np.isnan(y[1]).any()


@pytest.mark.parametrize("d", [3, 40, 300])
@pytest.mark.parametrize("at", [0, 1, -1])
def test_nan_rows_on_the_emulator(d, at):
    """A NaN anywhere in a row (a lane's first value, or one merged into an empty state) makes
    the whole row NaN, in every op that sums exponentials online; other rows are unaffected."""
    x = mx.random.normal((3, d), key=mx.random.key(d)) * 3
    x = mx.concatenate([x[:1], mx.full((1, d), -np.inf), x[2:]])
    x[0, at] = np.nan
    with emulator():
        outs = [S.softmax(x), S.log_softmax(x), S.logsumexp(x)]
        mx.eval(outs)
    for got, ref in zip(outs, [S.softmax_ref(x), S.log_softmax_ref(x), S.logsumexp_ref(x)]):
        got, ref = np.array(got), np.array(ref)
        assert np.isnan(got[0]).all() and np.isnan(ref[0]).all()
        np.testing.assert_allclose(got[2], ref[2], rtol=1e-5, atol=1e-6)


def test_extreme_values_on_the_emulator():
    x = mx.array([[1e4, -1e4, 0.0, 1e4] * 10, [0.0, -np.inf, 0.0, 0.0] * 10])
    m = mx.array([[True] * 40, [False] * 40])
    with emulator():
        y, lse, ym = S.softmax(x), S.logsumexp(x), S.masked_softmax(x, m)
        mx.eval(y, lse, ym)
    assert_close(y, S.softmax_ref(x))
    assert_close(lse, S.logsumexp_ref(x), rtol=1e-6)
    assert_close(ym, S.masked_softmax_ref(x, m))
    assert np.array(ym)[1].sum() == 0.0


def test_logsumexp_keepdims_and_dtype(rng):
    x = _x(rng, (2, 5, 7), mx.bfloat16)
    y = S.logsumexp(x, keepdims=True)
    assert y.shape == (2, 5, 1) and y.dtype == mx.bfloat16


def test_errors():
    with pytest.raises(TypeError, match=r"\[softmax\] expected 'x' to be float32"):
        S.softmax(mx.array([1, 2, 3]))
    with pytest.raises(TypeError, match=r"\[log_softmax\] expected 'x' to be an mlx array"):
        S.log_softmax([1.0, 2.0])
    with pytest.raises(ValueError, match=r"\[logsumexp\] expected 'x' with at least one axis"):
        S.logsumexp(mx.array(1.0))
    x = mx.zeros((2, 4))
    with pytest.raises(ValueError, match=r"\[masked_softmax\] expected 'mask' broadcastable"):
        S.masked_softmax(x, mx.zeros((3,)))
    with pytest.raises(ValueError, match=r"\[masked_softmax\] expected 'mask' broadcastable"):
        S.masked_softmax(x, mx.zeros((3, 2, 4)))  # would grow x
    with pytest.raises(TypeError, match=r"\[masked_softmax\] expected 'mask' to be bool"):
        S.masked_softmax(x, mx.zeros((4,), mx.int32))


def test_empty_input():
    x = mx.zeros((0, 8))
    assert S.softmax(x).shape == (0, 8)
    assert S.logsumexp(x).shape == (0,)
    with pytest.raises(ValueError, match=r"\[logsumexp\] expected rows of at least one"):
        S.logsumexp(mx.zeros((2, 0)))


def _grad_of(op, argnums=0):
    def run(*args):
        return mx.grad(lambda *a: (op(*a).astype(mx.float32) * 1.5).sum(), argnums=argnums)(*args)

    return run


@pytest.mark.no_emulate  # captures launches instead of running them
@pytest.mark.parametrize("d", [33, 300], ids=["warp", "block"])
def test_backward_kernels_compile(d, rng):
    x = _x(rng, (3, d), mx.bfloat16)
    mask = _x(rng, (d,), mx.bfloat16)
    keep = mx.array(rng.uniform(size=(3, d)) > 0.5)
    n = assert_compiles(_grad_of(S.softmax), x, only="vjp")
    n += assert_compiles(_grad_of(S.log_softmax), x, only="vjp")
    n += assert_compiles(_grad_of(S.masked_softmax, (0, 1)), x, mask, only="vjp")
    n += assert_compiles(_grad_of(lambda a: S.masked_softmax(a, keep)), x, only="vjp")
    n += assert_compiles(_grad_of(S.logsumexp), x, only="vjp")
    assert n > 0 or pytest.skip("no kernel checker on this machine")


@pytest.mark.parametrize("d", [40, 300], ids=["warp", "block"])
def test_backward_kernels_on_the_emulator(d, rng):
    x = _x(rng, (3, d), mx.float16)
    with emulator():
        before = launch_count()
        for op, ref in [
            (S.softmax, S.softmax_ref),
            (S.log_softmax, S.log_softmax_ref),
            (lambda a: S.scaled_softmax(a, 0.2), lambda a: S.scaled_softmax_ref(a, 0.2)),
            (S.logsumexp, S.logsumexp_ref),
        ]:
            check_grad(op, ref, [x], atol=8e-3, rtol=2e-2)
        assert launch_count() - before >= 8  # a forward and a backward kernel per op


@pytest.mark.gpu
def test_gpu_runs_forward_and_backward_kernels(rng):
    x = _x(rng, (4, 2048), mx.bfloat16)
    before = launch_count()
    mx.eval(_grad_of(S.softmax)(x))
    assert launch_count() - before >= 2
