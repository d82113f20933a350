"""Shared fixtures and the gpu/cuda/metal markers (they skip, never fail, without the hardware)."""

from __future__ import annotations

import contextlib
import os
import zlib

# References are float32: MLX's CUDA backend would otherwise run float32 matmuls in TF32
# (10-bit mantissa), far outside float32 tolerances. Read once, at MLX's first GEMM.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

import mlx.core as mx  # noqa: E402
import numpy as np
import pytest
from hypothesis import settings

from zmlx.core import emulate
from zmlx.core.backend import gpu_backend
from zmlx.testing import marker_skip_reason

# Every generated expression compiles two kernels on a GPU (about a second each with NVRTC):
# fewer examples there, more on the CPU where lowering is cheap.
settings.register_profile("cpu", max_examples=60)
settings.register_profile("gpu", max_examples=12)
settings.load_profile("cpu" if gpu_backend() == "cpu" else "gpu")


EMULATE = os.environ.get("ZMLX_TEST_EMULATE") == "1"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    # Stock MLX itself has no kernel for some tiny shapes on some backends (MLX 0.32.4's CUDA
    # quantized_matmul at the 64-wide fixtures): nothing of zmlx's to test there.
    try:
        return (yield)
    except RuntimeError as e:
        if "No implementation for problem shape" in str(e):
            pytest.skip(f"stock MLX cannot run this shape here: {str(e)[:200]}")
        raise


TEST_LOG = os.environ.get("ZMLX_TEST_LOG")


def pytest_runtest_logreport(report):
    # With ZMLX_TEST_LOG=DIR each worker appends "<when>:<outcome> <test id>" per test to
    # DIR/<worker>, a failure with " | " and its message's first line: on a GPU, an illegal
    # memory access spoils its process's context, so the tests that ran just before a worker's
    # first such failure are where to look (benchmarks/gpu_tests.py).
    if TEST_LOG and (report.when == "call" or report.outcome != "passed"):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        line = f"{report.when}:{report.outcome} {report.nodeid}"
        if report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            msg = crash.message if crash is not None else str(report.longrepr)
            line += " | " + (msg.strip().splitlines() or [""])[0][:200]
        with open(os.path.join(TEST_LOG, worker), "a") as f:
            f.write(line + "\n")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if EMULATE and item.get_closest_marker("no_emulate"):
            item.add_marker(pytest.mark.skip(reason="not meaningful under the CPU emulator"))
        for marker in ("gpu", "cuda", "metal"):
            if EMULATE and marker == "gpu":
                continue  # the emulator runs kernels, so GPU-only tests of kernel logic run too
            if item.get_closest_marker(marker):
                reason = marker_skip_reason(marker)
                if reason:
                    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's name (fresh, reproducible inputs per test)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    mx.random.seed(seed)
    return np.random.default_rng(seed)


DTYPES = [mx.float32, mx.float16, mx.bfloat16]


@pytest.fixture(autouse=True)
def _maybe_emulate():
    """With ZMLX_TEST_EMULATE=1 every test runs its kernels on the CPU SIMT emulator."""
    ctx = emulate.emulate() if EMULATE and gpu_backend() == "cpu" else contextlib.nullcontext()
    with ctx:
        yield
