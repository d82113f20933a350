"""The CPU SIMT emulator: barriers, shuffles, shared memory and the errors it detects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from zmlx.core import Kernel, emulate
from zmlx.testing import assert_close

pytestmark = pytest.mark.skipif(not emulate.available(), reason="needs a C++ compiler")


def _run(body, inputs, out_shape, grid, group, out_dtype=mx.float32, names=("x",)):
    k = Kernel("emu_test", list(names), ["out"], body)
    with emulate.emulate():
        (out,) = k(
            *inputs,
            output_shapes=[out_shape],
            output_dtypes=[out_dtype],
            grid=grid,
            threadgroup=group,
        )
    return out


def test_shared_memory_and_barrier_reverse_a_block():
    body = """
  ZX_SHARED float buf[128];
  buf[lid] = static_cast<float>(x[gid * lsize + lid]);
  zx_barrier();
  out[gid * lsize + lid] = buf[lsize - 1 - lid];
"""
    x = mx.arange(256).astype(mx.float32)
    out = _run(body, [x], (256,), (256, 1, 1), (128, 1, 1))
    want = np.concatenate([np.arange(127, -1, -1), np.arange(255, 127, -1)])
    assert_close(out, mx.array(want.astype(np.float32)))


def test_warp_and_block_reductions():
    body = """
  ZX_SHARED float buf[32];
  const float v = static_cast<float>(x[gid * lsize + lid]);
  const float w = zx_warp_sum(v);
  const float b = zx_block_max(v, buf);
  if (lane == 0) { out[(gid * lsize + lid) / 32] = w; }
  if (lid == 0) { out[8 + gid] = b; }
"""
    rng = np.random.default_rng(0)
    x = mx.array(rng.normal(size=256).astype(np.float32))
    out = _run(body, [x], (10,), (256, 1, 1), (128, 1, 1))
    xs = np.array(x)
    want = np.concatenate([xs.reshape(8, 32).sum(1), xs.reshape(2, 128).max(1)])
    assert_close(out, mx.array(want.astype(np.float32)), atol=1e-5)


def test_bfloat16_and_half_round_trip():
    body = "if (tid < 64) { out[tid] = static_cast<O>(static_cast<float>(x[tid]) * 3.0f); }"
    for dt in (mx.float16, mx.bfloat16):
        x = mx.random.normal((64,)).astype(dt)
        k = Kernel("emu_cast", ["x"], ["out"], body)
        with emulate.emulate():
            (out,) = k(
                x,
                output_shapes=[(64,)],
                output_dtypes=[dt],
                grid=(64, 1, 1),
                threadgroup=(64, 1, 1),
                template=[("O", dt)],
            )
        assert out.dtype == dt
        assert_close(out, (x.astype(mx.float32) * 3).astype(dt))


def test_divergent_shuffle_is_an_error():
    body = """
  float v = static_cast<float>(x[lid]);
  if (lane < 16) { v = zx_warp_sum(v); }
  zx_barrier();
  out[lid] = v;
"""
    with pytest.raises(RuntimeError, match="divergent warp shuffle"):
        _run(body, [mx.ones((32,))], (32,), (32, 1, 1), (32, 1, 1))


def test_barrier_in_divergent_code_is_an_error():
    body = """
  if (lid < 32) { zx_barrier(); }
  out[lid] = 1.0f;
"""
    with pytest.raises(RuntimeError, match="barrier not reached by every thread"):
        _run(body, [mx.ones((64,))], (64,), (64, 1, 1), (64, 1, 1))


def test_unwritten_outputs_are_poisoned():
    body = "if (tid < 10) { out[tid] = 1.0f; }"
    out = _run(body, [mx.ones((16,))], (16,), (32, 1, 1), (32, 1, 1))
    assert np.isnan(np.array(out)[10:]).all()


def test_host_prelude_defines_every_dialect_helper():
    """A helper added to the CUDA/Metal preludes must also exist for the emulator."""
    import re

    from zmlx.core.dialect import CUDA, METAL

    def helpers(text):
        return set(re.findall(r"ZX_INLINE\s+\w+\s+(zx_\w+)\(", text))

    host = helpers(emulate._HOST_PRELUDE + emulate._RUNTIME)
    missing = (
        (helpers(CUDA.prelude) | helpers(METAL.prelude)) - host - helpers(emulate._COMMON_MATH)
    )
    assert not missing, f"emulator prelude lacks {sorted(missing)}"


def _strided_kernel(body):
    return Kernel("emu_strides", ["x"], ["out"], body, ensure_row_contiguous=False)


def test_strided_kernels_get_a_strided_layout():
    # A kernel that reads its input through strides sees gaps between rows, as a KV-cache
    # slice has on a GPU: honouring the strides gives the rows, ignoring them reads poison.
    x = mx.arange(3 * 5, dtype=mx.float32).reshape(3, 5)
    right = "  const int r = tid / 5, c = tid % 5;\n  out[tid] = x[r * x_strides[0] + c * x_strides[1]];\n"
    wrong = "  (void)x_strides;\n  out[tid] = x[tid];\n"
    got = []
    for body in (right, wrong):
        with emulate.emulate():
            (out,) = _strided_kernel(body)(
                x, output_shapes=[(15,)], output_dtypes=[mx.float32], grid=(15, 1, 1),
                threadgroup=(15, 1, 1),
            )  # fmt: skip
        got.append(np.array(out))
    np.testing.assert_array_equal(got[0], np.arange(15, dtype=np.float32))
    assert np.isnan(got[1]).any()


@pytest.mark.skipif(os.name != "posix", reason="guard pages need mprotect")
def test_guard_mode_stops_a_read_past_the_end():
    code = (
        "import mlx.core as mx\n"
        "from zmlx.core import Kernel, emulate\n"
        "k = Kernel('reads_past_end', ['x'], ['out'], '  out[tid] = x[tid + 1];\\n')\n"
        "with emulate.emulate():\n"
        "    x = mx.arange(8, dtype=mx.float32)\n"
        "    ok = k(x, output_shapes=[(7,)], output_dtypes=[mx.float32], grid=(7, 1, 1),\n"
        "           threadgroup=(7, 1, 1))[0]\n"
        "    assert ok.tolist() == [1, 2, 3, 4, 5, 6, 7]\n"
        "    print('in bounds: ok', flush=True)\n"
        "    k(x, output_shapes=[(8,)], output_dtypes=[mx.float32], grid=(8, 1, 1),\n"
        "      threadgroup=(8, 1, 1))\n"
    )
    env = dict(os.environ, ZMLX_EMULATOR_GUARD="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(emulate.__file__).parents[2]),
                                         env.get("PYTHONPATH", "")])  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert "in bounds: ok" in proc.stdout, proc.stderr[-2000:]
    assert proc.returncode != 0  # the read past the end faults instead of returning garbage
    assert "guarded launch: reads_past_end" in proc.stderr


@pytest.mark.parametrize("order,last", [("reverse", 0), ("forward", 3)])
def test_groups_run_in_the_chosen_order(order, last, monkeypatch):
    # Every group writes its index to the same place: the last group to run wins. A GPU
    # promises no order; the emulator runs groups last to first unless told otherwise.
    monkeypatch.setenv("ZMLX_EMULATOR_ORDER", order)
    body = "  if (lid == 0) { out[0] = (float)gid; }\n"
    out = _run(body, [mx.zeros((1,))], (1,), (4 * 32, 1, 1), (32, 1, 1))
    assert out.item() == last


def test_shared_memory_starts_as_garbage_in_every_group():
    # One group writes the shared array; the other reads it without writing. On a GPU the
    # second group sees garbage, not the first group's values: here it sees NaN.
    body = """
  ZX_SHARED float buf[32];
  if (gid == 1) { buf[lid] = 1.0f; }
  zx_barrier();
  out[tid] = buf[lid];
"""
    out = np.array(_run(body, [mx.zeros((1,))], (64,), (64, 1, 1), (32, 1, 1)))
    assert (out[32:] == 1.0).all()  # the group that wrote
    assert np.isnan(out[:32]).all()  # the group that did not (it runs after, groups go 1, 0)


def test_a_missing_barrier_shows():
    # Each thread reads its neighbour's slot without a barrier: on a GPU the neighbour may not
    # have written it yet. Threads run last to first in even groups and first to last in odd
    # ones, so both directions of the dependency read unwritten (NaN) slots here.
    body = """
  ZX_SHARED float buf[32];
  buf[lid] = (float)lid;
  out[tid] = buf[(lid + 1) % 32];
"""
    out = np.array(_run(body, [mx.zeros((1,))], (64,), (64, 1, 1), (32, 1, 1)))
    assert np.isnan(out[:32]).any() and np.isnan(out[32:]).any()
    fixed = body.replace("  out[tid]", "  zx_barrier();\n  out[tid]")
    out = np.array(_run(fixed, [mx.zeros((1,))], (64,), (64, 1, 1), (32, 1, 1)))
    np.testing.assert_array_equal(out, np.tile((np.arange(32) + 1) % 32, 2).astype(np.float32))
