"""Dtype rules shared by every zmlx op: which dtypes are accepted and how they promote."""

from __future__ import annotations

from collections.abc import Iterable

import mlx.core as mx

FLOAT_DTYPES = (mx.float32, mx.float16, mx.bfloat16)
# C names of MLX's bool and integer dtypes, the same in CUDA, Metal and MLX's kernel names.
C_INT_NAMES = {
    mx.bool_: "bool",
    mx.int8: "int8_t",
    mx.int16: "int16_t",
    mx.int32: "int32_t",
    mx.int64: "int64_t",
    mx.uint8: "uint8_t",
    mx.uint16: "uint16_t",
    mx.uint32: "uint32_t",
    mx.uint64: "uint64_t",
}
_NAMES = {mx.float32: "float32", mx.float16: "float16", mx.bfloat16: "bfloat16"}


def dtype_name(d: mx.Dtype) -> str:
    return _NAMES.get(d) or str(d).replace("mlx.core.", "")


def check_float(op: str, name: str, x: mx.array) -> None:
    """Raise ``TypeError`` unless ``x`` is float32, float16 or bfloat16."""
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"[{op}] expected '{name}' to be float32, float16 or bfloat16, got {dtype_name(x.dtype)}"
        )


def promote(dtypes: Iterable[mx.Dtype]) -> mx.Dtype:
    """MLX's promotion among floating dtypes: equal -> itself, mixed -> float32."""
    ds = set(dtypes)
    if not ds:
        return mx.float32
    if len(ds) == 1:
        return ds.pop()
    return mx.float32


def as_array(op: str, name: str, x) -> tuple[mx.array, bool]:
    """Convert a Python number to a 0-d float32 array; returns ``(array, is_weak)``.

    A weak (Python-number) input does not take part in dtype promotion, as in MLX.
    """
    if isinstance(x, mx.array):
        return x, False
    if isinstance(x, (bool, int, float)):
        return mx.array(float(x), dtype=mx.float32), True
    raise TypeError(
        f"[{op}] expected '{name}' to be an mlx array or a number, got {type(x).__name__}"
    )
