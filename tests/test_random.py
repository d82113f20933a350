"""Dropout: the counter-based hash against an independent numpy version, bit-exact backends,
statistics, the gradient's mask, runtime seeds."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import emulator, launches
from zmlx.kernels.random import dropout, dropout_ref, random_bits_ref, seed_keys


def _np_mix(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def test_hash_matches_an_independent_numpy_version():
    k1, k2 = (np.uint32(k) for k in seed_keys(987654321))
    i = np.arange(5000, dtype=np.uint32)
    want = _np_mix(_np_mix(i + k1) ^ k2)
    got = np.array(random_bits_ref((50, 100), 987654321)).reshape(-1)
    assert (got == want).all()


def test_mask_statistics_and_scaling(rng):
    x = mx.ones((200, 500))
    for p in (0.1, 0.5, 0.9):
        y = dropout(x, p, seed=3)
        kept = float((y != 0).astype(mx.float32).mean())
        assert abs(kept - (1 - p)) < 0.01
        assert np.allclose(np.unique(np.array(y)), [0.0, 1 / (1 - p)], rtol=1e-6)
    a, b = dropout(x, 0.5, 1), dropout(x, 0.5, 2)
    assert not mx.array_equal(a, b)  # seeds differ
    assert mx.array_equal(a, dropout(x, 0.5, 1))  # and reproduce


def test_gradient_uses_the_forward_mask(rng):
    x = mx.array(rng.normal(size=(7, 33)).astype(np.float32))
    g = mx.grad(lambda x: (dropout(x, 0.3, 11) * 2.0).sum())(x)
    mask = dropout(mx.ones_like(x), 0.3, 11)
    assert mx.array_equal(g, 2.0 * mask)


def test_layout_does_not_change_the_mask(rng):
    x = mx.array(rng.normal(size=(9, 17)).astype(np.float32))
    assert mx.array_equal(dropout(x.T, 0.4, 5), dropout(mx.array(np.array(x.T)), 0.4, 5))


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16], ids=["f32", "f16", "bf16"])
def test_kernel_is_bit_exact_with_the_reference(dtype, rng):
    x = mx.array(rng.normal(size=(3, 1000)).astype(np.float32)).astype(dtype)
    with emulator():
        got = dropout(x, 0.37, 2**33 + 5)
        mx.eval(got)
    want = dropout_ref(x, 0.37, 2**33 + 5)
    assert mx.array_equal(got, want)


@pytest.mark.no_emulate  # captures launches instead of running them
def test_seed_and_p_are_runtime_values(rng):
    x = mx.ones((64,))
    a, b = launches("cuda", dropout, x, 0.1, 1), launches("cuda", dropout, x, 0.7, 2**50)
    assert a[0].kernel is b[0].kernel and a[0].template == b[0].template


def test_edges_and_errors():
    x = mx.ones((4,))
    assert dropout(x, 0.0, 1) is x
    assert mx.array_equal(dropout(x, 1.0, 1), mx.zeros_like(x))
    with pytest.raises(ValueError, match=r"\[dropout\] expected 0 <= p <= 1, got 1.5"):
        dropout(x, 1.5, 1)
    with pytest.raises(TypeError, match=r"\[dropout\] expected an integer seed"):
        dropout(x, 0.5, 1.0)
    with pytest.raises(TypeError, match=r"\[dropout\] expected 'x' to be float32"):
        dropout(mx.ones((4,), dtype=mx.int32), 0.5, 1)
