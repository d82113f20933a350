"""zmlx.core: backend choice, dialect rendering, kernel naming/caching, GPU-side smoke tests."""

from __future__ import annotations

import mlx.core as mx
import pytest

from zmlx.core import Kernel, backend, capture, force_backend
from zmlx.core.dialect import CUDA, METAL, render_body
from zmlx.testing import assert_close


@pytest.mark.no_emulate
def test_backend_is_cpu_inside_cpu_stream():
    with mx.stream(mx.cpu):
        assert backend() == "cpu"
    with force_backend("metal"):
        assert backend() == "metal"


def test_render_declares_only_used_indices():
    body = "if (tid >= n[0]) return; out[tid] = in[tid];"
    cuda, metal = render_body(body, CUDA), render_body(body, METAL)
    assert "const uint tid = blockIdx.x * blockDim.x + threadIdx.x;" in cuda
    assert "const uint tid = thread_position_in_grid.x;" in metal
    assert "lid" not in cuda and "threadgroup_position_in_grid" not in metal


def test_render_shape_spellings():
    body = "long l = zx_elem_to_loc(tid, ZX_SHAPE(a), ZX_STRIDES(a), ZX_NDIM(a));"
    assert "a_shape.data(), a_strides.data(), a_ndim" in render_body(body, CUDA)
    assert "a_shape, a_strides, a_ndim" in render_body(body, METAL)


def test_block_reduce_implies_lid_and_lsize():
    out = render_body("float s = zx_block_sum(v, buf);", CUDA)
    assert "const uint lid" in out and "const uint lsize" in out


def test_kernel_name_carries_source_hash():
    a = Kernel("k", ["x"], ["y"], "y[0] = x[0];")
    b = Kernel("k", ["x"], ["y"], "y[0] = x[0] + 1;")
    assert a.mlx_name("cuda") != b.mlx_name("cuda")
    assert a.mlx_name("cuda") == Kernel("k", ["x"], ["y"], "y[0] = x[0];").mlx_name("cuda")
    assert a.mlx_name("cuda") != a.mlx_name("metal")


@pytest.mark.no_emulate
def test_kernel_argument_errors():
    with pytest.raises(ValueError, match="at least one output"):
        Kernel("k", ["x"], [], "")
    with pytest.raises(ValueError, match="letters, digits"):
        Kernel("bad name", ["x"], ["y"], "")
    k = Kernel("k", ["x"], ["y"], "y[0] = x[0];")
    with capture("cuda"):
        with pytest.raises(ValueError, match="template N must be >= 0"):
            k(
                mx.ones((1,)),
                output_shapes=[(1,)],
                output_dtypes=[mx.float32],
                grid=(1, 1, 1),
                threadgroup=(1, 1, 1),
                template=[("N", -1)],
            )
        with pytest.raises(ValueError, match="expected 1 inputs"):
            k(
                output_shapes=[(1,)],
                output_dtypes=[mx.float32],
                grid=(1, 1, 1),
                threadgroup=(1, 1, 1),
            )
    with mx.stream(mx.cpu), pytest.raises(RuntimeError, match="expected a GPU backend"):
        k(
            mx.ones((1,)),
            output_shapes=[(1,)],
            output_dtypes=[mx.float32],
            grid=(1, 1, 1),
            threadgroup=(1, 1, 1),
        )


@pytest.mark.gpu
def test_raw_kernel_on_gpu():
    """A hand-written portable body runs on the GPU through the same launch code."""
    k = Kernel(
        "axpb",
        ["x", "a", "n"],
        ["y"],
        "  if (tid >= n[0]) { return; }\n"
        "  y[tid] = static_cast<O>(static_cast<float>(x[tid]) * a[0] + 1.0f);",
    )
    x = mx.random.normal((1000,)).astype(mx.float16)
    (y,) = k(
        x,
        mx.array([2.0]),
        mx.array([1000], dtype=mx.uint32),
        output_shapes=[(1000,)],
        output_dtypes=[mx.float16],
        grid=(1024, 1, 1),
        threadgroup=(256, 1, 1),
        template=[("O", mx.float16)],
    )
    assert_close(y, (x.astype(mx.float32) * 2 + 1).astype(mx.float16))
    assert k.stats.launches == 1 and len(k.stats.backends) == 1


@pytest.mark.gpu
def test_block_reductions_on_gpu():
    """zx_block_sum/max/min over groups of 32..1024 threads."""
    body = """
  ZX_SHARED float buf[32];
  const float v = (lid < n[0]) ? static_cast<float>(x[gid * n[0] + lid]) : 0.0f;
  const float s = zx_block_sum(v, buf);
  const float m = zx_block_max((lid < n[0]) ? v : ZX_NEG_INF, buf);
  const float lo = zx_block_min((lid < n[0]) ? v : ZX_INF, buf);
  if (lid == 0) { out[gid * 3] = s; out[gid * 3 + 1] = m; out[gid * 3 + 2] = lo; }
"""
    k = Kernel("block_red", ["x", "n"], ["out"], body)
    for g in (32, 64, 256, 1024):
        x = mx.random.normal((3, g))
        (out,) = k(
            x,
            mx.array([g], dtype=mx.uint32),
            output_shapes=[(9,)],
            output_dtypes=[mx.float32],
            grid=(3 * g, 1, 1),
            threadgroup=(g, 1, 1),
        )
        want = mx.stack([x.sum(-1), x.max(-1), x.min(-1)], axis=-1).reshape(-1)
        assert_close(out, want, atol=1e-4)
