"""@jit: Python functions of elementwise math become one fused op."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import zmlx
from zmlx.testing import assert_close, check_grad, expected_path

SCALE = 0.5


@zmlx.jit
def swish_gate(x, g):
    """A docstring is allowed."""
    s = mx.sigmoid(g)
    y = x * s
    y += SCALE * g
    return y


@zmlx.jit
def two_outputs(a, b):
    return a + b, mx.maximum(a, b) * mx.exp(-b * b)


def ref_swish_gate(x, g):
    return x * mx.sigmoid(g) + SCALE * g


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_jit_matches_reference_and_gradient(dtype, rng):
    x = mx.array(rng.normal(size=(5, 37)).astype(np.float32)).astype(dtype)
    g = mx.array(rng.normal(size=(37,)).astype(np.float32)).astype(dtype)
    y = swish_gate(x, g)
    assert swish_gate.op.last_path == expected_path()
    xf, gf = x.astype(mx.float32), g.astype(mx.float32)
    assert_close(y, ref_swish_gate(xf, gf).astype(dtype))
    check_grad(
        swish_gate,
        lambda x, g: ref_swish_gate(x.astype(mx.float32), g.astype(mx.float32)).astype(dtype),
        [x, g],
        atol={mx.float32: 1e-4, mx.float16: 2e-2, mx.bfloat16: 1.5e-1}[dtype],
        rtol=3e-2,
    )


def test_jit_multiple_outputs(rng):
    a = mx.array(rng.normal(size=(9,)).astype(np.float32))
    b = mx.array(rng.normal(size=(9,)).astype(np.float32))
    s, m = two_outputs(a, b)
    assert_close(s, a + b)
    assert_close(m, mx.maximum(a, b) * mx.exp(-b * b))


def test_jit_closure_constants():
    k = 3.0

    @zmlx.jit
    def scaled(x):
        return x * k

    assert_close(scaled(mx.array([1.0, 2.0])), mx.array([3.0, 6.0]))


def test_jit_rejects_unsupported_code():
    with pytest.raises(ValueError, match="unsupported statement 'If'"):

        @zmlx.jit
        def branchy(x):
            if x:
                return x
            return x

    with pytest.raises(ValueError, match="unknown function 'softmax'"):

        @zmlx.jit
        def f(x):
            return mx.softmax(x)

    with pytest.raises(ValueError, match="expected a 'return'"):

        @zmlx.jit
        def g(x):
            y = x  # noqa: F841
