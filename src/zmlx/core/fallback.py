"""Fallback notes: when an op takes its reference path on a GPU, say why.

Ops call :func:`note` with the reason (shape not covered, dtype not covered, slower than stock
MLX at this size). The count is kept per op; the message is printed when the op was called with
``verbose=True`` or when ``ZMLX_VERBOSE=1``.
"""

from __future__ import annotations

import os
from collections import Counter

_COUNTS: Counter[str] = Counter()


def note(op: str, reason: str, *, verbose: bool = False) -> None:
    """Record that ``op`` fell back to its reference path, and why."""
    _COUNTS[op] += 1
    if verbose or os.environ.get("ZMLX_VERBOSE") == "1":
        print(f"[{op}] reference path: {reason}")


def counts() -> dict[str, int]:
    """Fallbacks per op in this process."""
    return dict(_COUNTS)
