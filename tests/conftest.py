"""Shared fixtures and the gpu/cuda/metal markers (they skip, never fail, without the hardware)."""

from __future__ import annotations

import zlib

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import settings

from zmlx.core.backend import gpu_backend
from zmlx.testing import marker_skip_reason

# Every generated expression compiles two kernels on a GPU (about a second each with NVRTC):
# fewer examples there, more on the CPU where lowering is cheap.
settings.register_profile("cpu", max_examples=60)
settings.register_profile("gpu", max_examples=12)
settings.load_profile("cpu" if gpu_backend() == "cpu" else "gpu")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in ("gpu", "cuda", "metal"):
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
