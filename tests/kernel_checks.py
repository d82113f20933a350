"""Helpers for family tests: compile every kernel a call launches (forward and backward), and
run a call on the CPU emulator when it is available."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from zmlx.core import syntax
from zmlx.core.kernel import capture
from zmlx.testing import assert_close


def launches(backend_name: str, fn, *args):
    """The kernel launches ``fn(*args)`` issues for ``backend_name`` (outputs are zeros)."""
    with capture(backend_name) as got:
        out = fn(*args)
        mx.eval(out)
    return got


def zero_experts(e: int, n: int, m: int, bits: int = 4, group_size: int = 64,
                 mode: str = "affine"):  # fmt: skip
    """Zero ``(weight, scales, biases)`` of ``e`` stacked quantized experts of shape ``(n, m)``
    (affine: bfloat16 scales and biases; mxfp4: uint8 scales, no biases): a real model's
    shapes, for compile checks (no values needed)."""
    w = mx.zeros((e, n, m * bits // 32), dtype=mx.uint32)
    if mode == "mxfp4":
        return w, mx.zeros((e, n, m // group_size), dtype=mx.uint8), None
    return (w, mx.zeros((e, n, m // group_size), dtype=mx.bfloat16),
            mx.zeros((e, n, m // group_size), dtype=mx.bfloat16))  # fmt: skip


def assert_same_routing(got, want, atol: float, rtol: float) -> None:
    """``got`` and ``want`` (``(indices, weights)`` of a router) pick the same experts for
    every token, with close weights: compared as sorted (index, weight) pairs in float32, as
    kernels may order their picks otherwise."""
    (i1, w1), (i2, w2) = got, want
    o1, o2 = np.argsort(np.array(i1), -1), np.argsort(np.array(i2), -1)
    assert (
        np.take_along_axis(np.array(i1), o1, -1) == np.take_along_axis(np.array(i2), o2, -1)
    ).all()
    assert_close(mx.array(np.take_along_axis(np.array(w1.astype(mx.float32)), o1, -1)),
                 mx.array(np.take_along_axis(np.array(w2.astype(mx.float32)), o2, -1)),
                 atol=atol, rtol=rtol)  # fmt: skip


def assert_compiles(fn, *args, backends=("metal", "cuda"), only: str = "") -> int:
    """Compile (NVRTC / Metal shim) every distinct kernel ``fn(*args)`` launches whose name
    contains ``only``; returns how many were checked. Backends without a checker here are
    skipped."""
    checked, failures, seen = 0, [], set()
    for b in backends:
        if b == "cuda" and not syntax.cuda_available():
            continue
        if b == "metal" and not syntax.metal_available():
            continue
        for launch in launches(b, fn, *args):
            key = (launch.kernel.mlx_name(b), str(launch.inputs), str(launch.template))
            if only not in launch.kernel.name or key in seen:
                continue
            seen.add(key)
            r = syntax.check(launch)
            checked += 1
            if not r.ok:
                failures.append(f"{b} {launch.kernel.name}:\n{r.log[:2000]}")
    assert not failures, "\n\n".join(failures)
    return checked


def emulator():
    """The CPU emulator's context manager, or skip when zmlx has none."""
    try:
        from zmlx.core import emulate as E
    except ImportError:
        pytest.skip("zmlx.core.emulate is not available")
    if not E.available():
        pytest.skip("the emulator needs a C++ compiler")
    return E.emulate()
