"""Reductions: float64 oracles, other axes, ddof, argmax/argmin ties and NaN as MLX, top-k order
(ties, NaN, smallest), its gradient and fallback, errors, and the kernels on the emulator."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import emulator
from zmlx.core.kernel import launch_count
from zmlx.kernels import reductions as R
from zmlx.testing import assert_close, check_grad

SHAPES = [(1, 1), (3, 31), (2, 3, 300), (1, 4097)]


def _x(rng, shape, dtype=mx.float32, scale=2.0, shift=0.0):
    return mx.array((rng.normal(size=shape) * scale + shift).astype(np.float32)).astype(dtype)


def _f64(x):
    return np.array(x.astype(mx.float32), dtype=np.float64)


def _check_stats(x, ddof=1):
    z = _f64(x)
    d = z.shape[-1]
    dev = ((z - z.mean(-1, keepdims=True)) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        var1 = dev / max(d - ddof, 0)
    want = {
        "sum": (R.sum(x), z.sum(-1)),
        "mean": (R.mean(x), z.mean(-1)),
        "max": (R.max(x), z.max(-1)),
        "min": (R.min(x), z.min(-1)),
        "var": (R.var(x), dev / d),
        "std": (R.std(x, ddof=ddof), np.sqrt(var1)),
    }
    for name, (got, w) in want.items():
        assert got.dtype == x.dtype, name
        atol = {mx.float32: 1e-4}.get(x.dtype)
        assert_close(got, mx.array(w.astype(np.float32)).astype(x.dtype), atol=atol, name=name)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_statistics_match_float64(shape, dtype, rng):
    _check_stats(_x(rng, shape, dtype))


@pytest.mark.parametrize("shape", [(3, 31), (2, 300)], ids=["warp", "block"])
def test_statistics_kernels_on_the_emulator(shape, rng):
    # A large mean against a small spread: the two-pass variance stays accurate.
    x = _x(rng, shape, scale=0.5, shift=100.0)
    with emulator():
        before = launch_count()
        _check_stats(x)
        assert launch_count() - before == 6
        check_grad(R.var, R.var_ref, [x])
        check_grad(lambda a: R.std(a, ddof=1), lambda a: R.std_ref(a, ddof=1), [x])


def test_other_axes_and_keepdims(rng):
    x = _x(rng, (4, 5, 6))
    for op, ref in [(R.sum, np.sum), (R.max, np.max), (R.mean, np.mean)]:
        for axis in (0, 1, -1, 2):
            for keep in (False, True):
                got = op(x, axis=axis, keepdims=keep)
                want = ref(_f64(x), axis=axis, keepdims=keep)
                assert_close(got, mx.array(want.astype(np.float32)), atol=1e-5)
    assert R.var(x, axis=0, ddof=1).shape == (5, 6)
    assert R.argmax(x, axis=1, keepdims=True).shape == (4, 1, 6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf inside assert_close
def test_var_ddof_at_or_above_the_row_length_is_like_mlx():
    x = mx.array([[1.0, 2.0], [3.0, 3.0]])
    for ddof in (2, 3):
        assert_close(R.var(x, ddof=ddof), mx.var(x, axis=-1, ddof=ddof))
    with emulator():
        got = R.var(x, ddof=2)
    assert_close(got, mx.var(x, axis=-1, ddof=2))


ARG_ROWS = np.array(
    [
        [1.0, 3.0, 3.0, -2.0, -2.0, 0.0],  # ties: the lowest index wins
        [1.0, np.nan, 3.0, np.nan, -5.0, 0.0],  # NaN wins both argmax and argmin, as MLX
        [-np.inf, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf],
        [0.0, -0.0, 0.0, -0.0, 0.0, -0.0],  # -0.0 == 0.0
    ],
    dtype=np.float32,
)


def test_argmax_argmin_ties_and_nan_like_mlx():
    x = mx.array(np.tile(ARG_ROWS, (1, 50)))  # 300 columns: one group per row
    for d in (6, 300):
        a = x[:, :d]
        for emulated in (False, True):
            with emulator() if emulated else _null():
                got = (R.argmax(a), R.argmin(a))
                mx.eval(got)
            assert_close(got[0], mx.argmax(a, axis=-1), atol=0, rtol=0)
            assert_close(got[1], mx.argmin(a, axis=-1), atol=0, rtol=0)
    assert R.argmax(x).dtype == mx.uint32


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _np_topk(z, k, largest=True):
    """Oracle: NaN first, then by value, ties by lowest index."""
    idx = np.arange(z.shape[-1])
    out = []
    for row in z.reshape(-1, z.shape[-1]):
        key = np.where(np.isnan(row), np.inf, row if largest else -row)
        nan = np.isnan(row).astype(int)
        order = np.lexsort((idx, -key, -nan))[:k]
        out.append(order)
    return np.array(out).reshape(z.shape[:-1] + (k,))


@pytest.mark.parametrize("largest", [True, False], ids=["largest", "smallest"])
@pytest.mark.parametrize("shape,k", [((3, 31), 8), ((2, 300), 32), ((1, 40), 1)], ids=str)
def test_topk_order_ties_and_nan(shape, k, largest, rng):
    z = (rng.integers(-6, 6, size=shape) / 2).astype(np.float32)
    z[0, 3] = np.nan
    x = mx.array(z)
    want = _np_topk(z, k, largest)
    ref_v, ref_i = R.topk_ref(x, k, largest)
    assert (np.array(ref_i) == want).all()
    for emulated in (False, True):
        with emulator() if emulated else _null():
            v, i = R.topk(x, k, largest)
            mx.eval(v, i)
        assert i.dtype == mx.uint32 and v.dtype == x.dtype
        assert (np.array(i) == want).all()
        np.testing.assert_array_equal(np.array(v), np.take_along_axis(z, want, -1))


def test_topk_large_k_takes_the_sort(rng):
    x = _x(rng, (2, 100))
    with emulator():
        before = launch_count()
        v, i = R.topk(x, 40)
        mx.eval(v, i)
        assert launch_count() == before  # k > 32: no kernel
    assert_close(v, mx.sort(x, axis=-1)[:, ::-1][:, :40])


def test_topk_gradient_scatters_to_the_chosen_columns(rng):
    x = _x(rng, (3, 50))
    for ctx in (_null(), emulator()):
        with ctx:
            check_grad(lambda a: R.topk(a, 5)[0], lambda a: R.topk_ref(a, 5)[0], [x])


def test_errors():
    x = mx.zeros((2, 5))
    with pytest.raises(ValueError, match=r"\[topk\] expected an integer k in \[1, 5\]"):
        R.topk(x, 6)
    with pytest.raises(ValueError, match=r"\[topk\] expected an integer k"):
        R.topk(x, 0)
    with pytest.raises(ValueError, match=r"\[sum\] expected axis in \[-2, 2\)"):
        R.sum(x, axis=2)
    with pytest.raises(ValueError, match=r"\[var\] expected a non-negative integer ddof"):
        R.var(x, ddof=0.5)
    with pytest.raises(TypeError, match=r"\[argmax\] expected 'x' to be float32"):
        R.argmax(mx.zeros((2, 5), mx.int32))


def test_empty_input():
    assert R.sum(mx.zeros((0, 4))).shape == (0,)
    v, i = R.topk(mx.zeros((0, 4)), 2)
    assert v.shape == (0, 2) and i.shape == (0, 2)


@pytest.mark.gpu
def test_gpu_runs_the_kernels(rng):
    x = _x(rng, (4, 2048), mx.bfloat16)
    before = launch_count()
    mx.eval(R.var(x), R.argmax(x), R.topk(x, 8))
    assert launch_count() - before >= 3
