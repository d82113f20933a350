"""zmlx's core: backend choice, the portable kernel dialect, kernels, expressions."""

from .backend import backend, device_name, force_backend, gpu_backend
from .kernel import Kernel, capture, grid_1d, row_group_size, scalar

__all__ = [
    "Kernel",
    "backend",
    "capture",
    "device_name",
    "force_backend",
    "gpu_backend",
    "grid_1d",
    "row_group_size",
    "scalar",
]
