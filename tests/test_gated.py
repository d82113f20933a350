"""Gated activations: float64 oracles, the concatenated forms against the two-input ones (both
layouts), mlx-lm's own swiglu/swiglu_oai, bias gradients, errors, and the concat kernels
(forward and backward) on the CPU emulator and through the compilers."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from kernel_checks import assert_compiles, emulator
from zmlx.core.backend import gpu_backend
from zmlx.core.kernel import launch_count
from zmlx.kernels import gated as G
from zmlx.testing import assert_close, check_grad


def _x(rng, shape, dtype=mx.float32, scale=2.0):
    return mx.array((rng.normal(size=shape) * scale).astype(np.float32)).astype(dtype)


def _oracle(kind, g, u, alpha=1.702, limit=7.0):
    """float64 on the CPU stream (GPU kernels have no float64)."""
    with mx.stream(mx.cpu):
        g, u = g.astype(mx.float64), u.astype(mx.float64)
        if kind == "swiglu":
            a = g * mx.sigmoid(g)
        elif kind == "geglu":
            a = 0.5 * g * (1 + mx.erf(g / math.sqrt(2)))
        elif kind == "geglu_tanh":
            a = 0.5 * g * (1 + mx.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
        elif kind == "reglu":
            a = mx.maximum(g, 0)
        else:
            g = mx.minimum(g, limit)
            a = g * mx.sigmoid(alpha * g)
            u = mx.clip(u, -limit, limit) + 1
        return np.array(a * u)


TWO = {
    "swiglu": G.swiglu,
    "geglu": G.geglu,
    "geglu_tanh": lambda g, u, *b: G.geglu(g, u, *b, approximate="tanh"),
    "reglu": G.reglu,
    "swiglu_oai": G.swiglu_oai,
}
CONCAT = {
    "swiglu": G.swiglu_concat,
    "geglu": G.geglu_concat,
    "geglu_tanh": lambda x, *b, **kw: G.geglu_concat(x, *b, approximate="tanh", **kw),
    "reglu": G.reglu_concat,
    "swiglu_oai": G.swiglu_oai_concat,
}


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("kind", list(TWO))
def test_two_input_forms_match_float64(kind, dtype, rng):
    g, u = _x(rng, (3, 4, 33), dtype, 4.0), _x(rng, (3, 4, 33), dtype, 4.0)
    got = TWO[kind](g, u)
    assert got.dtype == dtype
    want = mx.array(_oracle(kind, g, u).astype(np.float32)).astype(dtype)
    assert_close(got, want, atol={mx.float32: 1e-5}.get(dtype), name=kind)


def _split(x, layout):
    return G._split_ref(x, layout)


@pytest.mark.parametrize("emulated", [False, True], ids=["default", "emulated"])
@pytest.mark.parametrize("layout", ["halves", "interleaved"])
def test_concat_forms_match_two_inputs(layout, emulated, rng):
    x = _x(rng, (5, 2 * 37), scale=4.0)
    bg, bu = _x(rng, (37,), scale=0.5), _x(rng, (37,), scale=0.5)
    g, u = _split(x, layout)
    with emulator() if emulated else _null():
        before = launch_count()
        for kind in CONCAT:
            got = CONCAT[kind](x, layout=layout)
            got_b = CONCAT[kind](x, bg, bu, layout=layout)
            mx.eval(got, got_b)
            assert_close(got, mx.array(_oracle(kind, g, u).astype(np.float32)), atol=1e-5)
            want_b = _oracle(kind, g + bg, u + bu)
            assert_close(got_b, mx.array(want_b.astype(np.float32)), atol=1e-5)
        kernels = emulated or gpu_backend() != "cpu"
        assert launch_count() - before == (2 * len(CONCAT) if kernels else 0)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_matches_mlx_lm_activations(rng):
    act = pytest.importorskip("mlx_lm.models.activations")
    g, u = _x(rng, (4, 64), scale=5.0), _x(rng, (4, 64), scale=5.0)
    assert_close(G.swiglu(g, u), act.swiglu(g, u))
    assert_close(G.swiglu_oai(g, u), act.swiglu_oai(g, u))
    assert_close(G.swiglu_oai(g, u, alpha=1.5, limit=3.0), act.swiglu_oai(g, u, 1.5, 3.0))
    # SwigluOAI's module takes (x, gate): up first.
    assert_close(G.swiglu_oai(g, u), act.SwigluOAI()(u, g))
    # phi3/glm4's fused MLP: gate, x = mx.split(gate_up_proj(h), 2, axis=-1).
    x = mx.concatenate([g, u], axis=-1)
    assert_close(G.swiglu_concat(x), act.swiglu(*mx.split(x, 2, axis=-1)))


@pytest.mark.parametrize("emulated", [False, True], ids=["default", "emulated"])
def test_bias_gradients(emulated, rng):
    g, u = _x(rng, (2, 3, 40), scale=4.0), _x(rng, (2, 3, 40), scale=4.0)
    bg, bu = _x(rng, (40,), scale=0.5), _x(rng, (40,), scale=0.5)
    x = mx.concatenate([g, u], axis=-1)
    with emulator() if emulated else _null():
        check_grad(G.swiglu, G.swiglu_ref, [g, u, bg, bu])
        check_grad(G.swiglu_oai, G.swiglu_oai_ref, [g, u, bg, bu])
        check_grad(lambda a, b: G.reglu(a, u, b), lambda a, b: G.reglu_ref(a, u, b), [g, bg])
        for layout in ("halves", "interleaved"):
            check_grad(
                lambda a, b, c, la=layout: G.swiglu_oai_concat(a, b, c, layout=la),
                lambda a, b, c, la=layout: G.gated_concat_ref("swiglu_oai", a, b, c, la),
                [x, bg, bu],
            )
            check_grad(
                lambda a, c, la=layout: G.geglu_concat(a, up_bias=c, layout=la),
                lambda a, c, la=layout: G.gated_concat_ref("geglu", a, None, c, la),
                [x, bu],
            )


def test_errors():
    x = mx.zeros((2, 6))
    with pytest.raises(ValueError, match=r"\[swiglu_concat\] expected 'x' with an even last"):
        G.swiglu_concat(mx.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"\[reglu_concat\] expected layout"):
        G.reglu_concat(x, layout="split")
    with pytest.raises(ValueError, match=r"\[swiglu\] expected 'gate_bias' of shape \(6,\)"):
        G.swiglu(x, x, mx.zeros((5,)))
    with pytest.raises(ValueError, match=r"\[geglu_concat\] expected 'up_bias' of shape \(3,\)"):
        G.geglu_concat(x, up_bias=mx.zeros((6,)))
    with pytest.raises(TypeError, match=r"\[swiglu_oai\] expected 'up' to be float32"):
        G.swiglu_oai(x, mx.zeros((2, 6), mx.int32))
    with pytest.raises(ValueError, match=r"\[geglu\] expected approximate"):
        G.geglu(x, x, approximate="fast")
    with pytest.raises(ValueError, match=r"\[swiglu\] expected shapes that broadcast"):
        G.swiglu(x, mx.zeros((2, 5)))


def test_empty_input():
    assert G.swiglu_concat(mx.zeros((0, 8))).shape == (0, 4)
    assert G.swiglu(mx.zeros((0, 4)), mx.zeros((0, 4))).shape == (0, 4)


@pytest.mark.no_emulate  # captures launches instead of running them
@pytest.mark.parametrize("layout", ["halves", "interleaved"])
def test_concat_backward_kernels_compile(layout, rng):
    x = _x(rng, (3, 2 * 40), mx.bfloat16)
    b = _x(rng, (40,), mx.bfloat16)

    def grad(a, c):
        def loss(a, c):
            return G.swiglu_oai_concat(a, c, c, layout=layout).astype(mx.float32).sum()

        return mx.grad(loss, argnums=(0, 1))(a, c)

    n = assert_compiles(grad, x, b, only="vjp")
    assert n > 0 or pytest.skip("no kernel checker on this machine")


@pytest.mark.gpu
def test_gpu_runs_forward_and_backward_kernels(rng):
    x = _x(rng, (4, 2 * 2048), mx.bfloat16)
    before = launch_count()
    mx.eval(mx.grad(lambda a: G.swiglu_concat(a).astype(mx.float32).sum())(x))
    assert launch_count() - before >= 2
