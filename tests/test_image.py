"""Image ops: resize against mlx.nn.Upsample and a numpy oracle, depthwise conv against
mx.conv2d(groups=C), gradients, errors."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from zmlx.kernels.image import (
    depthwise_conv3x3,
    depthwise_conv3x3_ref,
    resize_bilinear,
    resize_bilinear_ref,
)
from zmlx.testing import assert_close, check_grad


def _x(rng, shape, dtype=mx.float32):
    return mx.array(rng.normal(size=shape).astype(np.float32)).astype(dtype)


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("scale", [2, 3])
def test_resize_matches_mlx_upsample(scale, align, rng):
    x = _x(rng, (2, 5, 4, 6))
    want = nn.Upsample(scale_factor=scale, mode="linear", align_corners=align)(x)
    assert_close(resize_bilinear(x, 5 * scale, 4 * scale, align), want, atol=1e-5, rtol=1e-5)


def _np_resize(x, oh, ow, align):
    def coords(n, m):
        o = np.arange(m, dtype=np.float64)
        s = o * ((n - 1) / (m - 1)) if align and m > 1 else (o + 0.5) * n / m - 0.5
        s = np.zeros(m) if align and m == 1 else np.clip(s, 0, n - 1)
        i0 = np.floor(s).astype(int)
        return i0, np.minimum(i0 + 1, n - 1), s - i0

    y0, y1, wy = coords(x.shape[1], oh)
    x0, x1, wx = coords(x.shape[2], ow)
    wy, wx = wy[:, None, None], wx[:, None]
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bot = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bot * wy


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("out", [(7, 3), (1, 1), (13, 17)], ids=str)
def test_resize_matches_float64_oracle(out, align, rng):
    x = _x(rng, (1, 6, 9, 5))
    want = _np_resize(np.array(x, dtype=np.float64), *out, align)
    assert_close(resize_bilinear(x, *out, align), mx.array(want.astype(np.float32)), atol=1e-5)


def test_resize_to_the_same_size_is_a_copy_and_gradient(rng):
    x = _x(rng, (2, 4, 5, 3), mx.bfloat16)
    assert_close(resize_bilinear(x, 4, 5), x, atol=0, rtol=0)
    x = _x(rng, (1, 5, 6, 2))
    check_grad(lambda x: resize_bilinear(x, 8, 3), lambda x: resize_bilinear_ref(x, 8, 3), [x])


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 2)])
def test_depthwise_matches_mx_conv2d(stride, padding, rng):
    x, w, b = _x(rng, (2, 9, 8, 6)), _x(rng, (6, 3, 3, 1)), _x(rng, (6,))
    want = mx.conv2d(x, w, stride=stride, padding=padding, groups=6) + b
    assert_close(depthwise_conv3x3(x, w, b, stride, padding), want, atol=1e-5, rtol=1e-5)
    assert_close(depthwise_conv3x3_ref(x, w, b, stride, padding), want, atol=1e-5, rtol=1e-5)


def test_depthwise_gradients_match_mx_conv2d(rng):
    x, w = _x(rng, (1, 6, 7, 4)), _x(rng, (4, 3, 3))
    got = mx.grad(lambda x, w: (depthwise_conv3x3(x, w, None, 2) ** 2).sum(), argnums=(0, 1))(x, w)
    want = mx.grad(
        lambda x, w: (
            mx.conv2d(x, w.reshape(4, 3, 3, 1), stride=2, padding=1, groups=4) ** 2
        ).sum(),
        argnums=(0, 1),
    )(x, w)
    assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    assert_close(got[1], want[1], atol=1e-4, rtol=1e-4)


def test_errors():
    x = mx.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match=r"\[resize_bilinear\] expected a positive int out_h"):
        resize_bilinear(x, 0, 3)
    with pytest.raises(ValueError, match=r"\[depthwise_conv3x3\] expected x \(N, H, W, C\) and w"):
        depthwise_conv3x3(x, mx.zeros((3, 5, 5, 1)))
    with pytest.raises(ValueError, match=r"\[depthwise_conv3x3\] expected stride >= 1"):
        depthwise_conv3x3(x, mx.zeros((3, 3, 3, 1)), None, 0)
    with pytest.raises(ValueError, match=r"smaller than the 3x3 window"):
        depthwise_conv3x3(mx.zeros((1, 2, 2, 3)), mx.zeros((3, 3, 3, 1)), None, 1, 0)
