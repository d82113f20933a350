"""reduce, map_reduce and rowwise against float64 references, with gradients."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

import zmlx
from zmlx.testing import assert_close, check_grad, expected_path, to_numpy

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
DT_IDS = ["f32", "f16", "bf16"]
# Row lengths around the warp/block switch and odd sizes; leading shapes of one and many rows.
SHAPES = [(1, 1), (3, 31), (5, 33), (2, 3, 256), (4, 257), (2, 1000), (1, 4097)]


def _x(rng, shape, dtype, scale=1.0):
    return mx.array((rng.normal(size=shape) * scale).astype(np.float32)).astype(dtype)


REDUCTIONS = [
    (dict(op="sum"), lambda x: x.sum(-1)),
    (dict(op="max"), lambda x: x.max(-1)),
    (dict(op="min"), lambda x: x.min(-1)),
    (dict(op="sum", map="x * x", finalize="sqrt(acc / n)"), lambda x: np.sqrt((x * x).mean(-1))),
    (dict(op="sum", map="abs(x)"), lambda x: np.abs(x).sum(-1)),
    (
        dict(op=None, combine="max(a, b) + log1p(exp(-abs(a - b)))", init=-math.inf),
        lambda x: np.log(np.exp(x).sum(-1)),
    ),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", range(len(REDUCTIONS)))
def test_reduce_matches_float64(case, shape, dtype, rng):
    kwargs, ref = REDUCTIONS[case]
    op = zmlx.reduce(**kwargs)
    x = _x(rng, shape, dtype)
    y = op(x)
    assert op.last_path == expected_path()
    assert y.shape == shape[:-1] and y.dtype == dtype
    want = ref(to_numpy(x))
    d = shape[-1]
    # Long sums in float32 carry error that grows ~sqrt(D).
    atol = {mx.float32: 1e-5, mx.float16: 2e-3, mx.bfloat16: 2e-2}[dtype] * max(
        1.0, math.sqrt(d) / 4
    )
    assert_close(y, mx.array(want.astype(np.float32)).astype(dtype), atol=atol, check_dtype=False)


def test_reduce_prod_and_keepdims(rng):
    x = mx.array(rng.uniform(0.9, 1.1, size=(4, 50)).astype(np.float32))
    op = zmlx.reduce("prod", keepdims=True)
    y = op(x)
    assert y.shape == (4, 1)
    assert_close(y, mx.prod(x, axis=-1, keepdims=True), rtol=1e-5)


def test_reduce_with_second_input_and_gradient(rng):
    dot = zmlx.reduce("sum", map="x * y", inputs=("x", "y"))
    x, y = _x(rng, (6, 300), mx.float32), _x(rng, (300,), mx.float32)
    assert_close(dot(x, y), x @ y, atol=1e-4)
    check_grad(dot, lambda x, y: (x * y).sum(-1), [x, y])


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_reduce_gradients(dtype, rng):
    x = _x(rng, (5, 33), dtype)
    rms = zmlx.reduce("sum", map="x * x", finalize="sqrt(acc / n)")
    check_grad(rms, lambda x: mx.sqrt((x.astype(mx.float32) ** 2).mean(-1)).astype(x.dtype), [x])
    lse = zmlx.reduce(None, combine="max(a, b) + log1p(exp(-abs(a - b)))", init=-math.inf)
    check_grad(lse, lambda x: mx.logsumexp(x.astype(mx.float32), -1).astype(x.dtype), [x])


SOFTMAX = dict(passes=[("m", "max", "x"), ("s", "sum", "exp(x - m)")], out="exp(x - m) / s")
LAYERNORM = dict(
    passes=[("mu", "sum", "x / n"), ("var", "sum", "(x - mu) * (x - mu) / n")],
    out="(x - mu) * rsqrt(var + eps) * w + b",
    inputs=("x", "w", "b", "eps"),
)


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_map_reduce_softmax_and_layernorm(shape, dtype, rng):
    sm = zmlx.map_reduce(**SOFTMAX)
    x = _x(rng, shape, dtype, 2.0)
    y = sm(x)
    assert sm.last_path == expected_path()
    assert_close(
        y, mx.array(_np_softmax(to_numpy(x)).astype(np.float32)).astype(dtype), check_dtype=False
    )
    ln = zmlx.map_reduce(**LAYERNORM)
    w, b = _x(rng, shape[-1:], dtype), _x(rng, shape[-1:], dtype)
    y = ln(x, w, b, 1e-5)
    want = _np_layernorm(to_numpy(x), to_numpy(w), to_numpy(b), 1e-5)
    atol = {mx.float32: 5e-4, mx.float16: 1e-2, mx.bfloat16: 6e-2}[dtype]
    assert_close(y, mx.array(want.astype(np.float32)).astype(dtype), atol=atol, check_dtype=False)


def _mx_layernorm(x, w, b, eps):
    # Written out in MLX ops (not mx.fast.layer_norm) so the oracle is the same on every backend.
    x, w, b = (a.astype(mx.float32) for a in (x, w, b))
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * mx.rsqrt(var + eps) * w + b


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_map_reduce_gradients(dtype, rng):
    ln = zmlx.map_reduce(**LAYERNORM)
    x = _x(rng, (3, 65), dtype)
    w, b = _x(rng, (65,), dtype), _x(rng, (65,), dtype)
    check_grad(
        lambda x, w, b: ln(x, w, b, 1e-5),
        lambda x, w, b: _mx_layernorm(x, w, b, 1e-5).astype(dtype),
        [x, w, b],
        atol={mx.float32: 2e-4, mx.float16: 3e-2, mx.bfloat16: 2e-1}[dtype],
        rtol=5e-2,
    )


def test_map_reduce_multiple_outputs(rng):
    op = zmlx.map_reduce([("m", "max", "x")], ["x - m", "exp(x - m)"])
    x = _x(rng, (4, 40), mx.float32)
    a, b = op(x)
    assert_close(a, x - x.max(-1, keepdims=True))
    assert_close(b, mx.exp(x - x.max(-1, keepdims=True)))


RMS_BODY = """
  float acc = 0.0f;
  for (uint j = r_lid; j < D; j += r_step) {
    const float v = static_cast<float>(x[base + j]);
    acc += v * v;
  }
  acc = (D <= 256u) ? zx_warp_sum(acc) : zx_block_sum(acc, zx_buf);
  const float inv = zx_rsqrt(acc / (float)D + eps[0]);
  for (uint j = r_lid; j < D; j += r_step) {
    out[base + j] = static_cast<O>(static_cast<float>(x[base + j]) * inv * static_cast<float>(w[j]));
  }
"""


def _rms_ref(x, w, eps):
    xf = x.astype(mx.float32)
    return xf * mx.rsqrt((xf * xf).mean(-1, keepdims=True) + eps) * w.astype(mx.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shape", [(1, 64), (7, 257), (2, 3, 4096)], ids=str)
def test_rowwise_rms_norm(shape, dtype, rng):
    # A body that uses zx_block_sum must run in block mode only, so it branches on D.
    op = zmlx.rowwise(RMS_BODY, reference=_rms_ref, inputs=("x", "w", "eps"), name="my_rms")
    x, w = _x(rng, shape, dtype), _x(rng, shape[-1:], dtype)
    y = op(x, w, 1e-6)
    assert op.last_path == expected_path()
    want = mx.fast.rms_norm(x.astype(mx.float32), w.astype(mx.float32), 1e-6).astype(dtype)
    assert_close(y, want, atol={mx.float32: 1e-5, mx.float16: 4e-3, mx.bfloat16: 3e-2}[dtype])
    check_grad(
        lambda x, w: op(x, w, 1e-6),
        lambda x, w: _rms_ref(x, w, 1e-6).astype(dtype),
        [x, w],
        atol={mx.float32: 1e-4, mx.float16: 3e-2, mx.bfloat16: 2e-1}[dtype],
        rtol=5e-2,
    )


def test_row_ops_errors():
    s = zmlx.reduce("sum")
    with pytest.raises(ValueError, match="at least one axis"):
        s(mx.array(1.0))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        s(mx.array([1, 2]))
    with pytest.raises(ValueError, match="expected op in"):
        zmlx.reduce("mean")
    with pytest.raises(ValueError, match="needs both combine and init"):
        zmlx.reduce(None, combine="a + b")
    ln = zmlx.map_reduce(**LAYERNORM)
    with pytest.raises(ValueError, match=r"expected 'w' to have shape"):
        ln(mx.ones((2, 8)), mx.ones((7,)), mx.ones((8,)), 1e-5)
    with pytest.raises(ValueError, match="pass op"):
        zmlx.map_reduce([("m", "prod", "x")], "x")
    with pytest.raises(ValueError, match="reference function"):
        zmlx.rowwise("", reference=None)
    assert s(mx.zeros((0, 5))).shape == (0,)
