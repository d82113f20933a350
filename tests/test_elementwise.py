"""elementwise: outputs and gradients against float64 references, dtypes, shapes, errors."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

import zmlx
from zmlx.testing import assert_close, check_grad, expected_path, to_numpy

_erf = np.vectorize(math.erf)

# (expression, inputs, float64 numpy reference)
CASES = [
    ("x * sigmoid(x)", ("x",), lambda x: x / (1 + np.exp(-x))),
    ("x * tanh(log1p(exp(x)))", ("x",), lambda x: x * np.tanh(np.log1p(np.exp(x)))),
    ("gelu(x)", ("x",), lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2)))),
    (
        "gelu_tanh(x)",
        ("x",),
        lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    ),
    ("softplus(x)", ("x",), lambda x: np.logaddexp(x, 0)),
    ("sigmoid(x)", ("x",), lambda x: 1 / (1 + np.exp(-x))),
    ("maximum(x, 0)", ("x",), lambda x: np.maximum(x, 0)),
    ("where(x > 0, x, 0.01 * x)", ("x",), lambda x: np.where(x > 0, x, 0.01 * x)),
    ("x if x > 0 else expm1(x)", ("x",), lambda x: np.where(x > 0, x, np.expm1(x))),
    ("clip(x, -0.5, 0.5)", ("x",), lambda x: np.clip(x, -0.5, 0.5)),
    ("x * clip(x + 3, 0, 6) / 6", ("x",), lambda x: x * np.clip(x + 3, 0, 6) / 6),
    ("a * x + y", ("a", "x", "y"), lambda a, x, y: a * x + y),
    ("(x - y) ** 2", ("x", "y"), lambda x, y: (x - y) ** 2),
    ("x * y + z", ("x", "y", "z"), lambda x, y, z: x * y + z),
    ("where(x > y, x, y * 0.5)", ("x", "y"), lambda x, y: np.where(x > y, x, y * 0.5)),
    ("rsqrt(x * x + 1)", ("x",), lambda x: 1 / np.sqrt(x * x + 1)),
    ("log(1 + x * x)", ("x",), lambda x: np.log(1 + x * x)),
    ("sin(x) * cos(y)", ("x", "y"), lambda x, y: np.sin(x) * np.cos(y)),
    ("atan(x) + sinh(x / 4)", ("x",), lambda x: np.arctan(x) + np.sinh(x / 4)),
    ("abs(x) * sign(y)", ("x", "y"), lambda x, y: np.abs(x) * np.sign(y)),
    ("pow(abs(x) + 1, 1.5)", ("x",), lambda x: (np.abs(x) + 1) ** 1.5),
    ("sqrt(abs(x) + 1e-3)", ("x",), lambda x: np.sqrt(np.abs(x) + 1e-3)),
    ("exp(-x * x)", ("x",), lambda x: np.exp(-x * x)),
    (
        "where((x > 0) and (y < 0), x, 0.0) - minimum(x, y)",
        ("x", "y"),
        lambda x, y: np.where((x > 0) & (y < 0), x, 0.0) - np.minimum(x, y),
    ),
    (
        "tanh(x) * erf(y) + log2(abs(x) + 2)",
        ("x", "y"),
        lambda x, y: np.tanh(x) * _erf(y) + np.log2(np.abs(x) + 2),
    ),
    ("floor(x * 3) / 3 + ceil(y)", ("x", "y"), lambda x, y: np.floor(x * 3) / 3 + np.ceil(y)),
]
IDS = [c[0] for c in CASES]
# Tests of one expression share its kernels: keep them on one xdist worker (--dist loadgroup).
CASES = [pytest.param(*c, marks=pytest.mark.xdist_group(f"ew{i}")) for i, c in enumerate(CASES)]
DTYPES = [mx.float32, mx.float16, mx.bfloat16]
# Per-input shapes: same shape, broadcasting, awkward lengths.
SHAPES = [
    [(1,)],
    [(33,)],
    [(4097,)],
    [(3, 31), (31,), (3, 1)],
    [(2, 1, 5), (4, 1), (5,)],
]


def _inputs(rng, shapes, n, dtype):
    out = []
    for i in range(n):
        s = shapes[i % len(shapes)]
        out.append(mx.array(rng.normal(size=s).astype(np.float32) * 1.5).astype(dtype))
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: "x".join(map(str, s[0])))
@pytest.mark.parametrize("text,names,ref", CASES, ids=IDS)
def test_matches_float64(text, names, ref, shapes, dtype, rng):
    op = zmlx.elementwise(text, inputs=names)
    xs = _inputs(rng, shapes, len(names), dtype)
    y = op(*xs)
    assert op.last_path == expected_path()
    assert y.dtype == dtype
    want = ref(*[to_numpy(x) for x in xs])
    want = np.broadcast_to(want, y.shape)
    # The reference sees the same rounded inputs; the result is rounded once to `dtype`.
    scale = 2.0 if dtype == mx.float32 else 1.0
    assert_close(
        y,
        mx.array(want.astype(np.float32)).astype(dtype),
        name=text,
        check_dtype=False,
        dtype=dtype,
        atol=None if dtype != mx.float32 else 2e-5 * scale,
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("text,names,ref", CASES, ids=IDS)
def test_gradient_matches_float64_autodiff(text, names, ref, dtype, rng):
    """The symbolic VJP against MLX autodiff of the same expression computed in float64."""
    op = zmlx.elementwise(text, inputs=names)
    shapes = [(3, 33), (33,), (3, 1)]
    xs = _inputs(rng, shapes, len(names), dtype)

    cot = mx.array(rng.normal(size=op(*xs).shape).astype(np.float32))
    argnums = list(range(len(names)))
    got = mx.grad(lambda *a: (op(*a).astype(mx.float32) * cot).sum(), argnums=argnums)(*xs)
    with mx.stream(mx.cpu):
        xs64 = [x.astype(mx.float32).astype(mx.float64) for x in xs]
        want = mx.grad(
            lambda *a: (
                op.reference(*a, compute_dtype=mx.float64)[0] * cot.astype(mx.float64)
            ).sum(),
            argnums=argnums,
        )(*xs64)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == dtype and g.shape == xs[i].shape
        # Gradients reduce over broadcast axes: allow for that accumulation in low precision.
        atol, rtol = {
            mx.float32: (1e-4, 1e-4),
            mx.float16: (2e-2, 1e-2),
            mx.bfloat16: (1.5e-1, 3e-2),
        }[dtype]
        assert_close(
            g,
            w,
            atol=atol,
            rtol=rtol,
            check_dtype=False,
            name=f"{text} d/d{names[i]}",
        )


def test_non_contiguous_inputs(rng):
    op = zmlx.elementwise("x * y + 1", inputs=("x", "y"))
    base = mx.array(rng.normal(size=(37, 19)).astype(np.float32))
    xt = base.T  # (19, 37), transposed view
    ys = mx.array(rng.normal(size=(40, 80)).astype(np.float32))[::2, 3:40]  # (20, 37) strided
    y = op(xt, ys[:19])
    assert_close(y, xt * ys[:19] + 1)
    check_grad(op, lambda x, y: x * y + 1, [xt, ys[:19]])


def test_zero_d_and_empty():
    op = zmlx.elementwise("x * 2 + y", inputs=("x", "y"))
    y = op(mx.array(1.5), mx.array(0.25))
    assert y.shape == () and float(y) == 3.25
    e = op(mx.zeros((0, 4)), mx.ones((4,)))
    assert e.shape == (0, 4)


def test_python_numbers_do_not_promote():
    op = zmlx.elementwise("a * x", inputs=("a", "x"))
    x = mx.ones((8,), dtype=mx.bfloat16)
    assert op(2.0, x).dtype == mx.bfloat16
    assert op(mx.array(2.0), x).dtype == mx.float32  # an array takes part, as in MLX


def test_multiple_outputs_and_their_gradient(rng):
    op = zmlx.elementwise(["x + y", "x * y"], inputs=("x", "y"))
    x = mx.array(rng.normal(size=(17,)).astype(np.float32))
    y = mx.array(rng.normal(size=(17,)).astype(np.float32))
    s, p = op(x, y)
    assert_close(s, x + y)
    assert_close(p, x * y)
    check_grad(op, lambda x, y: (x + y, x * y), [x, y])


def test_gradient_override_is_used():
    # A deliberately different "gradient" proves the override is what runs.
    op = zmlx.elementwise("x * x", grad="g * 3 * y")
    x = mx.array([1.0, 2.0, -3.0])
    gx = mx.grad(lambda x: op(x).sum())(x)
    assert_close(gx, 3 * x * x)


def test_second_derivative():
    op = zmlx.elementwise("sin(x) * x")
    x = mx.array([0.3, -1.2, 2.0])
    d2 = mx.grad(mx.grad(lambda x: op(x).sum()))
    got = mx.vmap(lambda v: d2(v))(x) if False else mx.array([float(d2(v)) for v in x])
    want = 2 * mx.cos(x) - x * mx.sin(x)
    assert_close(got, want, atol=1e-5)


@pytest.mark.parametrize(
    "text,match",
    [
        ("x * foo(x)", "unknown function 'foo'"),
        ("x * y", "unknown name 'y'"),
        ("x * (x", "invalid syntax"),
        ("exp(x, x)", "expected 1 argument"),
        ("x % 2", "unsupported operator"),
        ("x.real", "unsupported attribute"),
        ("[x]", "unsupported syntax 'List'"),
        ("__import__('os')", "unknown function '__import__'"),
        ("", "expected an expression"),
    ],
)
def test_bad_expressions_raise_value_error(text, match):
    with pytest.raises(ValueError, match=match):
        zmlx.elementwise(text)


def test_bad_inputs_get_clear_errors():
    op = zmlx.elementwise("x + y", inputs=("x", "y"))
    with pytest.raises(
        TypeError, match=r"\[ew\] expected 'x' to be float32, float16 or bfloat16, got int32"
    ):
        op(mx.array([1, 2, 3]), mx.ones((3,)))
    with pytest.raises(ValueError, match="expected shapes that broadcast"):
        op(mx.ones((3,)), mx.ones((4,)))
    with pytest.raises(TypeError, match="expected 2 input"):
        op(mx.ones((3,)))
    with pytest.raises(TypeError, match="expected 'y' to be an mlx array or a number"):
        op(mx.ones((3,)), "a")
    with pytest.raises(ValueError, match="distinct input names"):
        zmlx.elementwise("x", inputs=("x", "x"))
    with pytest.raises(ValueError, match="compute_dtype float32"):
        zmlx.elementwise("x", compute_dtype=mx.float16)


@pytest.mark.no_emulate
def test_cpu_stream_gives_reference_path():
    op = zmlx.elementwise("x + 1")
    with mx.stream(mx.cpu):
        op(mx.ones((4,)))
        assert op.last_path == "reference"
