"""zmlx: fused kernels for MLX on CUDA, Metal and CPU.

Kernel authoring (``elementwise``, ``reduce``, ``map_reduce``, ``rowwise``, ``jit``), a
catalog of fused kernels (``zmlx.kernels``), and ``patch(model)`` for mlx-lm models.
"""

from __future__ import annotations

from .authoring.elementwise import ElementwiseOp, elementwise
from .authoring.jit import jit
from .authoring.rows import map_reduce, reduce, rowwise
from .core.backend import backend, device_name
from .core.kernel import Kernel

__version__ = "0.1.0"

__all__ = [
    "ElementwiseOp",
    "Kernel",
    "__version__",
    "backend",
    "device_name",
    "elementwise",
    "jit",
    "map_reduce",
    "reduce",
    "rowwise",
]


def __getattr__(name: str):
    # Patching pulls in mlx-lm lazily: `import zmlx` never imports it.
    if name in ("patch", "unpatch", "smart_patch", "load"):
        from . import patch as _patch

        return getattr(_patch, name)
    raise AttributeError(f"module 'zmlx' has no attribute {name!r}")
