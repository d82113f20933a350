"""Render every authoring path for CUDA and Metal and compile-check the sources.

Metal is checked with the host C++ compiler against a shim (no Metal compiler here); CUDA with
NVRTC for sm_90a (as MLX compiles them) when NVRTC and MLX's CUDA device headers are available.
"""

from __future__ import annotations

import math

import mlx.core as mx
import pytest

import zmlx
from zmlx.core import syntax
from zmlx.core.kernel import capture

BACKENDS = [
    pytest.param(
        "metal", marks=pytest.mark.skipif(not syntax.metal_available(), reason="no C++ compiler")
    ),
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not syntax.cuda_available(),
            reason="needs NVRTC, CUDA headers and ZMLX_MLX_CUDA_INCLUDE",
        ),
    ),
]


def _launch_all_authoring_paths():
    ew = zmlx.elementwise(
        "x * tanh(softplus(x)) + erf(y) - log1p(abs(x)) + expm1(y * 0.1)", inputs=("x", "y")
    )
    red = zmlx.reduce("sum", map="x * x", finalize="sqrt(acc / n)")
    lse = zmlx.reduce(None, combine="max(a, b) + log1p(exp(-abs(a - b)))", init=-math.inf)
    ln = zmlx.map_reduce(
        [("mu", "sum", "x / n"), ("var", "sum", "(x - mu) * (x - mu) / n")],
        "(x - mu) * rsqrt(var + eps) * w",
        inputs=("x", "w", "eps"),
    )

    @zmlx.jit
    def gate(a, b):
        return a * mx.sigmoid(b)

    for dtype in (mx.float32, mx.float16, mx.bfloat16):
        x = mx.ones((3, 40), dtype=dtype)
        ew(x, x)  # contiguous
        ew(x, mx.ones((40,), dtype=dtype))  # broadcast -> strided
        mx.grad(lambda a: ew(a, a).astype(mx.float32).sum())(x)
        for d in (100, 1000):  # warp-per-row and group-per-row
            r = mx.ones((3, d), dtype=dtype)
            red(r)
            lse(r)
            ln(r, mx.ones((d,), dtype=dtype), 1e-5)
        gate(x, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rendered_sources_compile(backend):
    with capture(backend) as launches:
        _launch_all_authoring_paths()
    assert launches, "no kernel launch was captured"
    failures = syntax.check_all(launches, max_log=3000)
    assert not failures, "\n\n".join(failures)


def test_capture_runs_the_gpu_launch_code_on_cpu():
    op = zmlx.elementwise("x + 1")
    with capture("cuda") as launches:
        y = op(mx.ones((1000,)))
    assert op.last_path == "cuda"
    assert y.shape == (1000,)
    (launch,) = launches
    per_thread = dict(launch.template).get("VEC", 1)
    assert launch.grid[0] % launch.threadgroup[0] == 0
    assert launch.grid[0] * per_thread >= 1000
    assert launch.kernel.mlx_name("cuda").startswith("zx_ew_f_")
