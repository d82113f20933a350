"""The ``quantized_linear`` pattern (quantized linears through zmlx's matvec at decode) and the
runtime-parameter vectors every kernel reads (``zmlx.core.kernel.vector``)."""

from __future__ import annotations

import warnings

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from test_quant import run_kernel
from zmlx.core.emulate import emulate
from zmlx.core.kernel import launch_count, scalar, vector
from zmlx.patch import patch, unpatch
from zmlx.patch.base import Context
from zmlx.patch.patterns.quantized_linear import QuantizedLinearPattern

pytest.importorskip("mlx_lm")

from zmlx.models import build  # noqa: E402


def _linear(d, n, bias, bits=4, group_size=64, dtype=mx.bfloat16):
    lin = nn.Linear(d, n, bias=bias)
    if bias:
        lin.bias = mx.random.normal((n,), key=mx.random.key(3)) * 0.1
    lin.set_dtype(dtype)
    return nn.QuantizedLinear.from_linear(lin, group_size=group_size, bits=bits)


def _fused(module, max_tokens=16):
    pattern = QuantizedLinearPattern()
    verdict = pattern.check(module, Context(family="qwen3_moe", args=None, backend="cuda"))
    assert verdict.kind == "match", verdict
    return pattern.build(module, {**verdict.config, "max_tokens": max_tokens})


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_decode_calls_run_the_kernel_and_match(bias, bits):
    lin = _linear(256, 40, bias, bits)
    fused = _fused(lin)
    x = mx.random.normal((1, 3, 256), key=mx.random.key(1)).astype(mx.bfloat16)
    want = lin(x)
    got = run_kernel(fused, x)  # the kernel ran (on the emulator)
    assert got.shape == want.shape and got.dtype == want.dtype
    # Against float64 (MLX's CPU quantized_matmul sums bfloat16 in bfloat16: further off).
    w = np.array(mx.dequantize(lin.weight, lin.scales, lin.biases, 64, bits).astype(mx.float32))
    ref = np.array(x.astype(mx.float32)).astype(np.float64) @ w.T.astype(np.float64)
    if bias:
        ref = ref + np.array(lin.bias.astype(mx.float32))
    np.testing.assert_allclose(np.array(got.astype(mx.float32)), ref, rtol=1e-2, atol=2e-2)


def test_a_bias_of_another_dtype_runs_the_original():
    fused = _fused(_linear(128, 24, True, dtype=mx.float32))
    x = mx.random.normal((1, 1, 128), key=mx.random.key(4)).astype(mx.bfloat16)
    assert mx.array_equal(fused(x), fused.__dict__["_zmlx_original"](x))


def test_longer_calls_run_the_original():
    lin = _linear(128, 24, False)
    fused = _fused(lin, max_tokens=2)
    x = mx.random.normal((1, 5, 128), key=mx.random.key(2))
    with emulate():
        before = launch_count()
        got = fused(x)
        mx.eval(got)
        assert launch_count() == before  # prefill: MLX's quantized_matmul
    assert mx.array_equal(got, lin(x))


def test_what_it_matches_and_skips():
    pattern, ctx = QuantizedLinearPattern(), Context(family="qwen3_moe", args=None, backend="cuda")
    assert pattern.check(nn.Linear(64, 8), ctx).kind == "no"  # not quantized
    three = nn.QuantizedLinear.from_linear(nn.Linear(128, 8), group_size=64, bits=3)
    verdict = pattern.check(three, ctx)
    assert verdict.kind == "skip" and "no matvec kernel" in verdict.reason


def test_patch_applies_it_only_when_asked_and_unpatch_reverts():
    model = build("qwen3_moe", "tiny", quant="4bit")
    x = mx.array([[1, 2, 3]])
    want = model(x)
    assert "quantized_linear" not in patch(model).patterns()  # no safety entry
    unpatch(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = patch(model, patterns=["quantized_linear"])
    # 2 layers of q/k/v/o and a router linear each, and the lm_head
    assert report.patterns() == {"quantized_linear": 11}
    assert unpatch(model) == 11
    assert mx.array_equal(model(x), want)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.int32, mx.uint32])
@pytest.mark.parametrize("values", [(3,), (1, 2), (4, 5, 6, 7, 8)])
def test_vectors_keep_their_values_shape_and_identity(values, dtype):
    v = vector(values, dtype)
    assert v.shape == (len(values),) and v.dtype == dtype
    assert v.tolist() == [dtype_cast(x, dtype) for x in values]
    assert vector(values, dtype) is v  # cached: a new value is a new array, never a new build
    assert scalar(values[0], dtype).tolist() == [dtype_cast(values[0], dtype)]


def dtype_cast(x, dtype):
    return float(x) if dtype in (mx.float32, mx.float16) else int(x)


def test_vectors_made_inside_a_compiled_function():
    """On CUDA a new vector is copied into device memory by a GPU op evaluated at once, also
    when it is first asked for while ``mx.compile`` traces."""
    f = mx.compile(lambda x: x * vector((7.25, 0.5), mx.float32)[0])
    assert f(mx.ones((3,))).tolist() == [7.25] * 3
    assert vector((7.25, 0.5), mx.float32).tolist() == [7.25, 0.5]
