"""Which hardware the next op runs on: the one place in zmlx that asks.

``backend()`` answers from MLX's default device at call time, so ``with mx.stream(mx.cpu):``
turns every zmlx op into its plain-MLX reference path. ``ZMLX_BACKEND=cpu`` forces the
reference path everywhere (useful to bisect a kernel bug).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Iterator
from typing import Literal

import mlx.core as mx

Backend = Literal["cuda", "metal", "cpu"]


@functools.lru_cache(maxsize=1)
def gpu_backend() -> Backend:
    """The GPU backend MLX was built with, or ``"cpu"`` when it has none.

    Returns:
        ``"cuda"`` or ``"metal"`` when the MLX build can run GPU kernels, else ``"cpu"``.
    """
    if os.environ.get("ZMLX_BACKEND", "").lower() == "cpu":
        return "cpu"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return "cuda"
    if mx.metal.is_available():
        return "metal"
    return "cpu"


_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("zmlx_backend", default=None)


@contextlib.contextmanager
def force_backend(name: Backend) -> Iterator[None]:
    """Make :func:`backend` answer ``name`` inside the block.

    Used with :func:`zmlx.core.kernel.capture` to render and check GPU kernels on a machine
    without that GPU; launching a kernel for a backend MLX lacks still fails.
    """
    token = _FORCED.set(name)
    try:
        yield
    finally:
        _FORCED.reset(token)


def backend() -> Backend:
    """The backend the next zmlx op will use: ``"cuda"``, ``"metal"`` or ``"cpu"``.

    ``"cpu"`` means the plain-MLX reference path; it is chosen when MLX has no GPU backend,
    when the default device is the CPU (for example inside ``with mx.stream(mx.cpu):``), or
    when ``ZMLX_BACKEND=cpu`` is set.
    """
    forced = _FORCED.get()
    if forced is not None:
        return forced  # type: ignore[return-value]
    gpu = gpu_backend()
    if gpu == "cpu" or mx.default_device() != mx.gpu:
        return "cpu"
    return gpu


def device_name() -> str:
    """A human-readable name of the device ops run on (for capsules and reports)."""
    b = backend()
    if b == "cpu":
        import platform

        return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    try:
        info = mx.device_info()
        name = info.get("device_name") or info.get("architecture") or b
        return str(name)
    except Exception:  # device_info is best effort: naming must never fail a run
        return b
