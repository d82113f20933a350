"""Kernel foundry: evaluate kernel templates over grids of knobs and shapes, and turn the
results into a fine-tuning dataset.

    python -m zmlx.foundry run --ops silu rms_norm --grid group=64,256,1024 --out runs/a
    python -m zmlx.foundry export --format chat --runs runs/a --out data/kernels
    python -m zmlx.train --model PATH --data data/kernels     # or mlx_lm.lora --data ...

:mod:`.sweep` evaluates (static checks, correctness on several shapes and dtypes, timing on a
GPU) through the same path as the kernel search (:mod:`zmlx.discover`); :mod:`.dataset`
writes mlx-lm's chat JSONL and validates it.
"""

from .dataset import check_example, examples, validate, write
from .sweep import parse_grid, points, read, run

__all__ = [
    "check_example",
    "examples",
    "parse_grid",
    "points",
    "read",
    "run",
    "validate",
    "write",
]
