"""Bit packing: 1, 2, 4 or 8-bit unsigned values in uint32 words.

Layout (little end first): value ``j`` of a row goes to word ``j // (32 / bits)`` at bit
offset ``bits * (j % (32 / bits))``; the first value sits in the lowest bits. This is the
layout of MLX's quantized weights for 2, 4 and 8 bits (``mx.quantize`` packs its integer
codes this way; ``tests/test_bits.py`` checks it), so ``unpack_bits(w_q, 4)`` gives the
4-bit codes of a quantized matrix and ``pack_bits`` builds one. Packing masks each value to
its low ``bits`` bits. The ops are integer-valued and have no gradient.
"""

from __future__ import annotations

import mlx.core as mx

from ..core.backend import backend
from ..core.kernel import Kernel, grid_1d
from ._common import dims
from .catalog import KernelSpec, register

BITS = (1, 2, 4, 8)
_GROUP = 256


def _check_bits(op: str, bits) -> int:
    if bits not in BITS:
        raise ValueError(f"[{op}] expected bits in {BITS}, got {bits!r}")
    return int(bits)


def _check_int(op: str, name: str, a) -> None:
    if not isinstance(a, mx.array) or not mx.issubdtype(a.dtype, mx.integer):
        got = a.dtype if isinstance(a, mx.array) else type(a).__name__
        raise TypeError(f"[{op}] expected '{name}' to be an integer mlx array, got {got}")
    if a.ndim == 0:
        raise ValueError(f"[{op}] expected '{name}' with at least one axis, got a 0-d array")


def pack_bits_ref(values: mx.array, bits: int) -> mx.array:
    """Pack in MLX ops.

    Shapes:
        values: ``(..., N)`` with ``N * bits % 32 == 0`` -> ``(..., N * bits / 32)`` uint32.
    """
    per = 32 // bits
    v = values.astype(mx.uint32) & ((1 << bits) - 1)
    v = v.reshape(values.shape[:-1] + (values.shape[-1] // per, per))
    shifts = mx.arange(0, 32, bits, dtype=mx.uint32)
    return mx.sum(v << shifts, axis=-1)  # the fields do not overlap: the sum is an or


def unpack_bits_ref(packed: mx.array, bits: int, dtype: mx.Dtype = mx.uint8) -> mx.array:
    """Unpack in MLX ops.

    Shapes:
        packed: ``(..., W)`` uint32 -> ``(..., W * 32 / bits)`` of ``dtype``.
    """
    shifts = mx.arange(0, 32, bits, dtype=mx.uint32)
    v = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    return v.reshape(packed.shape[:-1] + (-1,)).astype(dtype)


PACK = Kernel(
    "pack_bits",
    ["vals", "zx_n"],
    ["out"],
    """
  if (tid >= zx_n[0]) { return; }
  const uint BITS = zx_n[1];  // a run-time value: one build per dtype serves 1/2/4/8 bits
  const uint PER = 32u / BITS;
  const uint MASK = (1u << BITS) - 1u;
  uint w = 0u;
  for (uint j = 0u; j < PER; ++j) {
    w |= (static_cast<uint>(vals[(long)tid * PER + j]) & MASK) << (BITS * j);
  }
  out[tid] = w;
""",
)

UNPACK = Kernel(
    "unpack_bits",
    ["packed", "zx_n"],
    ["out"],
    """
  if (tid >= zx_n[0]) { return; }
  const uint BITS = zx_n[1];
  const uint PER = 32u / BITS;
  const uint MASK = (1u << BITS) - 1u;
  const uint w = static_cast<uint>(packed[tid / PER]);
  out[tid] = static_cast<O>((w >> (BITS * (tid % PER))) & MASK);
""",
)


def pack_bits(values: mx.array, bits: int) -> mx.array:
    """Pack unsigned ``bits``-bit values into uint32 words (layout in the module docstring).

    Args:
        values: integers; each is masked to its low ``bits`` bits.
        bits: 1, 2, 4 or 8.

    Returns:
        The uint32 words.

    Shapes:
        values: ``(..., N)`` with ``N * bits % 32 == 0`` -> ``(..., N * bits / 32)``.
    """
    bits = _check_bits("pack_bits", bits)
    _check_int("pack_bits", "values", values)
    per = 32 // bits
    if values.shape[-1] % per:
        raise ValueError(
            f"[pack_bits] expected a last axis that is a multiple of {per} for {bits}-bit "
            f"values, got {values.shape[-1]}"
        )
    out_shape = values.shape[:-1] + (values.shape[-1] // per,)
    n = values.size // per
    if backend() == "cpu" or n == 0 or values.size >= 2**31:
        return pack_bits_ref(values, bits)
    grid, group = grid_1d(n, _GROUP)
    (out,) = PACK(
        values,
        dims(n, bits),
        output_shapes=[out_shape],
        output_dtypes=[mx.uint32],
        grid=grid,
        threadgroup=group,
    )
    return out


def unpack_bits(packed: mx.array, bits: int, dtype: mx.Dtype = mx.uint8) -> mx.array:
    """Unpack uint32 words into ``bits``-bit values (layout in the module docstring).

    Args:
        packed: uint32 words.
        bits: 1, 2, 4 or 8.
        dtype: an integer dtype for the values (default uint8).

    Returns:
        The values.

    Shapes:
        packed: ``(..., W)`` -> ``(..., W * 32 / bits)``.
    """
    bits = _check_bits("unpack_bits", bits)
    _check_int("unpack_bits", "packed", packed)
    if packed.dtype != mx.uint32:
        raise TypeError(f"[unpack_bits] expected 'packed' to be uint32, got {packed.dtype}")
    if not mx.issubdtype(dtype, mx.integer):
        raise TypeError(f"[unpack_bits] expected an integer output dtype, got {dtype}")
    per = 32 // bits
    out_shape = packed.shape[:-1] + (packed.shape[-1] * per,)
    n = packed.size * per
    if backend() == "cpu" or n == 0 or n >= 2**31:
        return unpack_bits_ref(packed, bits, dtype)
    grid, group = grid_1d(n, _GROUP)
    (out,) = UNPACK(
        packed,
        dims(n, bits),
        output_shapes=[out_shape],
        output_dtypes=[dtype],
        grid=grid,
        threadgroup=group,
        template=[("O", dtype)],
    )
    return out


# ---------------------------------------------------------------------------------------
# Catalog entries (the dtype axis is the dtype of the unpacked values)


def _values(case, dtype, rng):
    shape, bits = case["shape"], case["bits"]
    hi = 1 << bits if case.get("in_range", True) else 256
    v = mx.array(rng.integers(0, hi, size=shape[::-1] if case.get("transpose") else shape))
    v = v.astype(dtype)
    return v.T if case.get("transpose") else v


CASES = (
    {"id": "1bit-3x64", "shape": (3, 64), "bits": 1},
    {"id": "2bit-31x16", "shape": (31, 16), "bits": 2},
    {"id": "8bit-4097x4", "shape": (4097, 4), "bits": 8},
    {"id": "4bit-33x8", "shape": (33, 8), "bits": 4},
    {"id": "8bit-1x4", "shape": (1, 4), "bits": 8},
    {"id": "4bit-transposed", "shape": (40, 16), "bits": 4, "transpose": True},
    {"id": "4bit-row-4096", "shape": (1, 4096), "bits": 4},
    {"id": "2bit-out-of-range", "shape": (5, 32), "bits": 2, "in_range": False},
)
BENCH = (
    {"id": "4bit-4096x4096", "shape": (4096, 4096), "bits": 4},
    {"id": "8bit-4096x11008", "shape": (4096, 11008), "bits": 8},
)
_DTYPES = (mx.uint8, mx.uint32)

register(
    KernelSpec(
        name="pack_bits",
        family="bits",
        op=pack_bits,
        ref=pack_bits_ref,
        make_inputs=lambda c, d, rng: (_values(c, d, rng), c["bits"]),
        cases=CASES,
        bench_cases=BENCH,
        dtypes=_DTYPES,
        description="pack 1/2/4/8-bit values into uint32 words (MLX's quantized layout)",
    )
)
register(
    KernelSpec(
        name="unpack_bits",
        family="bits",
        op=unpack_bits,
        ref=unpack_bits_ref,
        make_inputs=lambda c, d, rng: (pack_bits_ref(_values(c, d, rng), c["bits"]), c["bits"], d),
        cases=CASES,
        bench_cases=BENCH,
        dtypes=_DTYPES,
        description="unpack uint32 words into 1/2/4/8-bit values (MLX's quantized layout)",
    )
)
