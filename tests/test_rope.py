"""RoPE: mx.fast.rope semantics, a float64 oracle, runtime offsets, the fused decode op."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, launches
from zmlx.kernels.rope import rope, rope_ref
from zmlx.kernels.rope_cache import rope_qk_cache_update, rope_qk_cache_update_ref
from zmlx.testing import assert_close, check_grad, tolerance

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
IDS = ["f32", "f16", "bf16"]
VARIANTS = [
    dict(dims=64, traditional=False),
    dict(dims=64, traditional=True),
    dict(dims=32, traditional=False),
    dict(dims=40, traditional=True, scale=0.25),
]


def _x(rng, shape, dtype=mx.float32):
    return mx.array(rng.normal(size=shape).astype(np.float32)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("kw", VARIANTS, ids=["split", "interleaved", "partial", "partial-trad"])
def test_matches_mx_fast_rope(kw, dtype, rng):
    x = _x(rng, (2, 3, 5, 64), dtype)
    kw = dict(base=10000.0, scale=1.0) | kw
    for offset in (0, 11, mx.array([4, 9], dtype=mx.int32)):
        want = mx.fast.rope(x, offset=offset, **kw)
        # MLX's CPU path rounds sin/cos to the input dtype; allow that rounding.
        atol, rtol = tolerance(dtype, 2.0)
        assert_close(rope(x, offset=offset, **kw), want, atol=atol, rtol=rtol)


def test_freqs_override_and_gqa_head_counts(rng):
    freqs = mx.array((2.0 ** np.arange(16)).astype(np.float32))
    for heads in (32, 4):  # queries and keys of a GQA layer
        x = _x(rng, (1, heads, 3, 32))
        want = mx.fast.rope(x, 32, traditional=False, base=None, scale=1.0, offset=7, freqs=freqs)
        assert_close(rope(x, 32, False, None, 1.0, 7, freqs), want, atol=1e-5, rtol=1e-5)


def test_float64_oracle_at_long_positions(rng):
    x = _x(rng, (1, 2, 3, 128))
    y = rope(x, 128, base=500000.0, offset=100000)
    xn = np.array(x, dtype=np.float64)
    half = 64
    inv = np.exp2(-(np.arange(half, dtype=np.float32) / half) * np.float32(np.log2(500000.0)))
    theta = (np.arange(3) + 100000.0)[:, None] * inv.astype(np.float64)
    c, s = np.cos(theta), np.sin(theta)
    x1, x2 = xn[..., :half], xn[..., half:]
    want = np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
    # float32 angles near 1e5 rad carry ~4e-3 rad of rounding: the kernel and MLX share it.
    assert_close(y, mx.array(want.astype(np.float32)), atol=2e-2, rtol=0)
    assert_close(y, rope_ref(x, 128, base=500000.0, offset=100000), atol=1e-4, rtol=1e-4)


def test_gradient_is_the_inverse_rotation(rng):
    x = _x(rng, (2, 2, 4, 48))
    check_grad(
        lambda x: rope(x, 32, True, offset=3), lambda x: rope_ref(x, 32, True, offset=3), [x]
    )
    g = mx.grad(lambda x: (rope(x, 48, offset=5) * x).sum())(x)
    want = mx.grad(
        lambda x: (mx.fast.rope(x, 48, traditional=False, base=1e4, scale=1.0, offset=5) * x).sum()
    )(x)
    assert_close(g, want, atol=1e-5, rtol=1e-4)


@pytest.mark.no_emulate  # captures launches instead of running them
def test_offsets_and_scale_are_runtime_values(rng):
    x = _x(rng, (1, 4, 1, 64))
    a = launches("cuda", rope, x, 64, False, 10000.0, 1.0, 5)
    b = launches("cuda", rope, x, 64, False, 10000.0, 0.5, 6000)
    assert len(a) == len(b) == 1 and a[0].template == b[0].template
    assert a[0].kernel is b[0].kernel


@pytest.mark.no_emulate
def test_strided_input_is_read_without_a_copy_and_backward_compiles(rng):
    x = _x(rng, (1, 9, 4, 32), mx.bfloat16).transpose(0, 2, 1, 3)
    (launch,) = launches("cuda", rope, x, 32, False, 10000.0, 1.0, 3)
    assert launch.kernel.ensure_row_contiguous is False
    grad = mx.grad(lambda x: rope(x, 32, offset=3).astype(mx.float32).sum())
    assert_compiles(grad, x)


def test_rope_errors():
    x = mx.ones((1, 2, 3, 8))
    with pytest.raises(ValueError, match=r"\[rope\] expected even dims with 0 < dims <= 8"):
        rope(x, 7)
    with pytest.raises(ValueError, match=r"\[rope\] expected 'x' with at least 3 axes"):
        rope(mx.ones((3, 8)), 8)
    with pytest.raises(ValueError, match=r"\[rope\] expected exactly one of base and freqs"):
        rope(x, 8, base=None)
    with pytest.raises(ValueError, match=r"\[rope\] expected a scalar offset or one per batch"):
        rope(x, 8, offset=mx.array([1, 2], dtype=mx.int32))
    with pytest.raises(TypeError, match=r"\[rope\] expected an int or an integer array offset"):
        rope(x, 8, offset=1.5)


# ------------------------------------------------------------------------------------------
# rope_qk_cache_update


def _decode(rng, b=2, hq=8, hk=2, s=12, d=32, dtype=mx.float32):
    return (
        _x(rng, (b, hq, 1, d), dtype),
        _x(rng, (b, hk, 1, d), dtype),
        _x(rng, (b, hk, 1, d), dtype),
        _x(rng, (b, hk, s, d), dtype),
        _x(rng, (b, hk, s, d), dtype),
    )


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
def test_cache_update_matches_stock_ops(dtype, rng):
    q, k, v, kc, vc = _decode(rng, dtype=dtype)
    qr, kc2, vc2 = rope_qk_cache_update(q, k, v, kc, vc, 5, dims=16, traditional=True)
    kw = dict(traditional=True, base=10000.0, scale=1.0, offset=5)
    assert_close(qr, mx.fast.rope(q, 16, **kw), atol=0.02, rtol=0.02)
    want_k, want_v = mx.array(kc), mx.array(vc)
    want_k[:, :, 5:6, :] = mx.fast.rope(k, 16, **kw)
    want_v[:, :, 5:6, :] = v
    assert_close(vc2, want_v, atol=0, rtol=0)
    assert_close(kc2, want_k, atol=0.02, rtol=0.02)
    # Every other position is copied bit for bit.
    rest = mx.concatenate([kc2[:, :, :5], kc2[:, :, 6:]], axis=2)
    assert_close(rest, mx.concatenate([kc[:, :, :5], kc[:, :, 6:]], axis=2), atol=0, rtol=0)


def test_cache_update_per_batch_offsets_and_gradient(rng):
    q, k, v, kc, vc = _decode(rng, b=3, hq=4, hk=4, s=6, d=16)
    off = mx.array([0, 5, 2], dtype=mx.int32)
    got = rope_qk_cache_update(q, k, v, kc, vc, off)
    want = rope_qk_cache_update_ref(q, k, v, kc, vc, off)
    for g, w in zip(got, want):
        assert_close(g, w)
    for i, o in enumerate((0, 5, 2)):
        assert_close(got[2][i, :, o], v[i, :, 0], atol=0, rtol=0)
    check_grad(
        lambda *a: rope_qk_cache_update(*a, off),
        lambda *a: rope_qk_cache_update_ref(*a, off),
        [q, k, v, kc, vc],
    )


def test_cache_update_errors(rng):
    q, k, v, kc, vc = _decode(rng)
    with pytest.raises(ValueError, match=r"\[rope_qk_cache_update\] expected q \(B, Hq, 1, D\)"):
        rope_qk_cache_update(mx.concatenate([q, q], axis=2), k, v, kc, vc, 0)
    with pytest.raises(ValueError, match=r"\[rope_qk_cache_update\] expected caches of shape"):
        rope_qk_cache_update(q, k, v, kc, vc[:, :, :3], 0)
    with pytest.raises(TypeError, match=r"\[rope_qk_cache_update\] expected k, v in their"):
        rope_qk_cache_update(q, k, v, kc.astype(mx.float16), vc, 0)
