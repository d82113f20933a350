"""Scans: float64 oracles forward and reversed over one and several chunks, -inf/inf in
logcumsumexp, gradients (cumsum's backward is a reversed scan kernel), errors, compilation."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, emulator
from zmlx.core.kernel import launch_count
from zmlx.kernels import scans as S
from zmlx.testing import assert_close, check_grad


def _np_scan(kind, z, reverse):
    z = z[..., ::-1] if reverse else z
    if kind == "cumsum":
        out = np.cumsum(z, -1)
    elif kind == "cumprod":
        out = np.cumprod(z, -1)
    else:
        with np.errstate(divide="ignore"):
            out = np.logaddexp.accumulate(z, -1)
    return out[..., ::-1] if reverse else out


def _inputs(kind, rng, shape):
    if kind == "cumprod":
        z = rng.uniform(0.9, 1.1, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    else:
        z = rng.normal(size=shape)
    return mx.array(z.astype(np.float32))


OPS = {"cumsum": S.cumsum, "cumprod": S.cumprod, "logcumsumexp": S.logcumsumexp}
REFS = {"cumsum": S.cumsum_ref, "cumprod": S.cumprod_ref, "logcumsumexp": S.logcumsumexp_ref}


def _check(kind, x, reverse):
    got = OPS[kind](x, reverse)
    want = _np_scan(kind, np.array(x, dtype=np.float64), reverse)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert_close(got, mx.array(want.astype(np.float32)), atol=1e-4, rtol=1e-4, name=kind)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", list(OPS))
def test_scans_match_float64(kind, reverse, rng):
    for shape in [(1, 1), (3, 31), (2, 3, 300), (1, 4097)]:
        _check(kind, _inputs(kind, rng, shape), reverse)


# 31 and 129 columns: one chunk of a 32- and 64-thread group; 5000: two chunks of 4096.
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", list(OPS))
def test_scan_kernels_on_the_emulator(kind, reverse, rng):
    xs = [_inputs(kind, rng, s) for s in [(3, 31), (2, 129), (1, 5000)]]
    xs.append(_inputs(kind, rng, (40, 3)).T)  # strided rows
    with emulator():
        before = launch_count()
        for x in xs:
            _check(kind, x, reverse)
        assert launch_count() - before == len(xs)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf inside assert_close
def test_logcumsumexp_with_infinities():
    x = mx.array([[-np.inf, -np.inf, 0.0, np.inf, 1.0], [-np.inf, 2.0, -np.inf, 2.0, -np.inf]])
    want = mx.logcumsumexp(x, axis=-1)
    assert_close(S.logcumsumexp(x), want)
    with emulator():
        got = S.logcumsumexp(x)
    assert_close(got, want)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradients_on_the_emulator(reverse, rng):
    with emulator():
        for kind in OPS:
            x = _inputs(kind, rng, (2, 300))
            before = launch_count()
            check_grad(
                lambda a, k=kind: OPS[k](a, reverse),
                lambda a, k=kind: REFS[k](a, reverse),
                [x],
                atol=1e-4,
                rtol=1e-4,
            )
            # cumsum's backward is a scan kernel too; the others differentiate the reference.
            assert launch_count() - before == (3 if kind == "cumsum" else 2)


def test_matches_stock_mlx(rng):
    x = _inputs("cumsum", rng, (4, 64))
    for kind in OPS:
        for rev in (False, True):
            stock = getattr(mx, kind)(x, axis=-1, reverse=rev)
            assert_close(OPS[kind](x, rev), stock, atol=1e-5)


def test_errors_and_empty():
    with pytest.raises(TypeError, match=r"\[cumsum\] expected reverse to be a bool"):
        S.cumsum(mx.zeros((2, 3)), 1)
    with pytest.raises(TypeError, match=r"\[cumprod\] expected 'x' to be float32"):
        S.cumprod(mx.zeros((2, 3), mx.int32))
    assert S.logcumsumexp(mx.zeros((0, 3))).shape == (0, 3)


@pytest.mark.no_emulate  # captures launches instead of running them
def test_backward_kernel_compiles(rng):
    x = _inputs("cumsum", rng, (3, 300)).astype(mx.bfloat16)
    n = assert_compiles(lambda a: mx.grad(lambda b: (S.cumsum(b) * 1.5).sum())(a), x)
    assert n > 0 or pytest.skip("no kernel checker on this machine")


@pytest.mark.gpu
def test_gpu_runs_forward_and_backward_kernels(rng):
    x = _inputs("cumsum", rng, (4, 5000)).astype(mx.bfloat16)
    before = launch_count()
    mx.eval(mx.grad(lambda a: S.cumsum(a).astype(mx.float32).sum())(x))
    assert launch_count() - before >= 2
