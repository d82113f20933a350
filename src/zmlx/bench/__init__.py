"""Benchmarking: timing helpers and capsules (versioned JSON records of measurements)."""

from .capsule import load, make, validate, write
from .timing import Timing, compare, measure

__all__ = ["Timing", "compare", "load", "make", "measure", "validate", "write"]
