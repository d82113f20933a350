"""Kernel authoring from Python: elementwise, reduce, map_reduce, rowwise and jit."""
