"""Losses: cross-entropy against float64, mlx.nn and mx.fast (ignore_index, label smoothing,
reductions, vocabulary-sized rows), KL divergence, z-loss, errors, and the kernels (forward
and backward) on the CPU emulator and through the compilers."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from kernel_checks import assert_compiles, emulator
from zmlx.core.kernel import launch_count
from zmlx.kernels import losses as L
from zmlx.testing import assert_close, check_grad


def _x(rng, shape, dtype=mx.float32, scale=2.0):
    return mx.array((rng.normal(size=shape) * scale).astype(np.float32)).astype(dtype)


def _targets(rng, shape, v, ignore_every=0):
    t = rng.integers(0, v, size=shape)
    if ignore_every:
        t.reshape(-1)[::ignore_every] = -100
    return mx.array(t.astype(np.int32))


def _np_ce(x, t, eps=0.0, ignore=-100):
    z = np.array(x.astype(mx.float32), dtype=np.float64)
    t = np.array(t)
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]
    valid = t != ignore
    zt = np.take_along_axis(z, np.where(valid, t, 0)[..., None], -1)[..., 0]
    loss = lse - (1 - eps) * zt - eps * z.mean(-1)
    return np.where(valid, loss, 0.0), valid


@pytest.mark.parametrize("eps", [0.0, 0.1], ids=["plain", "smoothed"])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 31), (2, 3, 300), (4, 151936)], ids=str)
def test_cross_entropy_matches_float64(shape, dtype, eps, rng):
    x = _x(rng, shape, dtype)
    t = _targets(rng, shape[:-1], shape[-1], ignore_every=3)
    want, valid = _np_ce(x, t, eps)
    for red in ("none", "sum", "mean"):
        got = L.softmax_cross_entropy(x, t, label_smoothing=eps, reduction=red)
        assert got.dtype == mx.float32
        w = {"none": want, "sum": want.sum(), "mean": want.sum() / max(valid.sum(), 1)}[red]
        assert_close(got, mx.array(np.asarray(w, dtype=np.float32)), atol=2e-5, rtol=2e-5)


def test_cross_entropy_agrees_with_mlx(rng):
    x, t = _x(rng, (6, 1000)), _targets(rng, (6,), 1000)
    y = L.softmax_cross_entropy(x, t)
    assert_close(y, nn.losses.cross_entropy(x, t), atol=1e-5)
    assert_close(y, mx.fast.cross_entropy(x, t), atol=1e-5)
    y = L.softmax_cross_entropy(x, t, label_smoothing=0.2, reduction="mean")
    assert_close(y, nn.losses.cross_entropy(x, t, label_smoothing=0.2, reduction="mean"))


@pytest.mark.parametrize("eps", [0.0, 0.15], ids=["plain", "smoothed"])
@pytest.mark.parametrize("shape", [(5, 33), (2, 1500)], ids=["short", "long"])
def test_cross_entropy_kernels_on_the_emulator(shape, eps, rng):
    x = _x(rng, shape)
    t = _targets(rng, shape[:-1], shape[-1], ignore_every=2)
    want, _ = _np_ce(x, t, eps)
    with emulator():
        before = launch_count()
        got = L.softmax_cross_entropy(x, t, label_smoothing=eps)
        mx.eval(got)
        assert launch_count() - before == 1
        assert_close(got, mx.array(want.astype(np.float32)), atol=2e-5)
        check_grad(
            lambda a: L.softmax_cross_entropy(a, t, label_smoothing=eps, reduction="mean"),
            lambda a: (
                L.softmax_cross_entropy_ref(a, t, label_smoothing=eps).sum() / (t != -100).sum()
            ),
            [x],
        )


def test_cross_entropy_gradient_of_ignored_rows_is_zero(rng):
    x = _x(rng, (4, 50))
    t = mx.array([3, -100, 7, -100])
    for ctx in (_null(), emulator()):
        with ctx:
            g = mx.grad(lambda a: L.softmax_cross_entropy(a, t).sum())(x)
            mx.eval(g)
        assert np.array(g)[[1, 3]].max() == 0.0 and np.abs(np.array(g)[[0, 2]]).max() > 0


def test_cross_entropy_odd_inputs_on_the_emulator(rng):
    # A transposed (strided) logits array, int64 targets, a target out of range (NaN) and a
    # one-dimensional input (one row, a 0-d target).
    x = _x(rng, (40, 3)).T
    t = mx.array([1, 39, 40], dtype=mx.int64)
    with emulator():
        y = L.softmax_cross_entropy(x, t)
        y1 = L.softmax_cross_entropy(x[0], t[0])
        mx.eval(y, y1)
    want, _ = _np_ce(x, np.array([1, 39, 0]))
    assert_close(y[:2], mx.array(want[:2].astype(np.float32)), atol=2e-5)
    assert np.isnan(np.array(y)[2])
    assert y1.shape == () and abs(y1.item() - want[0]) < 2e-5


def test_cross_entropy_all_ignored_mean_is_zero():
    x = mx.zeros((3, 5))
    t = mx.full((3,), -100, dtype=mx.int32)
    assert L.softmax_cross_entropy(x, t, reduction="mean").item() == 0.0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _log_probs(rng, shape):
    z = _x(rng, shape)
    return z - mx.logsumexp(z, axis=-1, keepdims=True)


def test_kl_divergence_matches_float64_and_mlx(rng):
    p, q = _log_probs(rng, (3, 4, 50)), _log_probs(rng, (3, 4, 50))
    a, b = np.array(p, dtype=np.float64), np.array(q, dtype=np.float64)
    want = (np.exp(a) * (a - b)).sum(-1)
    assert_close(L.kl_divergence(p, q), mx.array(want.astype(np.float32)), atol=2e-6)
    assert_close(L.kl_divergence(p, q), nn.losses.kl_div_loss(q, p, axis=-1), atol=2e-6)
    # A column with p = 0 contributes 0 (not NaN), even where q is -inf.
    p2 = mx.array([[0.0, -np.inf]])
    q2 = mx.array([[-0.1, -np.inf]])
    assert_close(L.kl_divergence(p2, q2), mx.array([0.1]))
    with emulator():
        got = L.kl_divergence(p, q)
        check_grad(L.kl_divergence, L.kl_divergence_ref, [p, q])
    assert_close(got, mx.array(want.astype(np.float32)), atol=2e-6)


def test_z_loss_matches_float64(rng):
    x = _x(rng, (3, 2, 300), mx.bfloat16)
    z = np.array(x.astype(mx.float32), dtype=np.float64)
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]
    assert_close(L.z_loss(x), mx.array(np.float32((lse**2).mean())), rtol=1e-5)
    assert_close(L.z_loss(x, reduction="sum"), mx.array(np.float32((lse**2).sum())), rtol=1e-5)
    assert L.z_loss(x, reduction="none").shape == (3, 2)
    with emulator():
        check_grad(L.z_loss, L.z_loss_ref, [x.astype(mx.float32)])


def test_errors(rng):
    x = _x(rng, (2, 5))
    op = r"\[softmax_cross_entropy\]"
    with pytest.raises(TypeError, match=op + " expected integer 'targets'"):
        L.softmax_cross_entropy(x, mx.zeros((2,)))
    with pytest.raises(ValueError, match=op + r" expected 'targets' of shape \(2,\)"):
        L.softmax_cross_entropy(x, mx.zeros((3,), mx.int32))
    with pytest.raises(ValueError, match=op + " expected reduction"):
        L.softmax_cross_entropy(x, mx.zeros((2,), mx.int32), reduction="avg")
    with pytest.raises(ValueError, match=op + " expected label_smoothing"):
        L.softmax_cross_entropy(x, mx.zeros((2,), mx.int32), label_smoothing=1.0)
    with pytest.raises(TypeError, match=op + " expected 'logits' to be float32"):
        L.softmax_cross_entropy(mx.zeros((2, 5), mx.int32), mx.zeros((2,), mx.int32))
    with pytest.raises(ValueError, match=r"\[kl_divergence\] expected 'logq' of shape"):
        L.kl_divergence(x, x[:, :3])
    with pytest.raises(ValueError, match=r"\[z_loss\] expected reduction"):
        L.z_loss(x, reduction="max")


def _grad_of(op):
    def run(x):
        return mx.grad(lambda a: op(a).sum())(x)

    return run


@pytest.mark.no_emulate  # captures launches instead of running them
def test_backward_kernels_compile(rng):
    x = _x(rng, (3, 2000), mx.bfloat16)
    t = _targets(rng, (3,), 2000)
    n = assert_compiles(_grad_of(lambda a: L.softmax_cross_entropy(a, t)), x, only="vjp")
    n += assert_compiles(_grad_of(L.z_loss), x, only="vjp")
    assert n > 0 or pytest.skip("no kernel checker on this machine")


@pytest.mark.gpu
def test_gpu_runs_forward_and_backward_kernels(rng):
    x = _x(rng, (4, 151936), mx.bfloat16)
    t = _targets(rng, (4,), 151936)
    before = launch_count()
    mx.eval(mx.grad(lambda a: L.softmax_cross_entropy(a, t, reduction="mean"))(x))
    assert launch_count() - before >= 2
