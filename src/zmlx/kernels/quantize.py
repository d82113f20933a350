"""Quantize and dequantize like ``mx.quantize`` / ``mx.dequantize``, bit for bit.

:func:`quantize` covers affine 2/4/8-bit (group sizes 32/64/128) and mxfp4; :func:`dequantize`
affine 4/8-bit and mxfp4 (its body is in :mod:`.quant_kernels`, beside the matvecs).

MLX's backends do not quantize alike, so "matching ``mx.quantize``" depends on where it runs
(read from MLX's sources and checked on the CPU against MLX 0.32.4):

* **affine**, per group: ``scale = max((hi - lo) / (2^bits - 1), 1e-7)``, signed towards the
  end of larger magnitude (``edge``); ``q0 = round(edge / scale)``; unless ``q0 == 0``,
  ``scale = edge / q0`` and ``bias = edge``; ``q = clip(round((w - bias) / scale), 0, 2^bits - 1)``,
  all in float32, scale and bias then rounded to the input dtype. The CPU kernel takes
  ``lo, hi`` as the group's minimum and maximum and rounds half to even (``rint``); the CUDA
  and Metal kernels start the maximum at 0 (``hi = max(0, max(w))``) and round half away from
  zero (``round``).
* **mxfp4** (groups of 32, e2m1 values, e8m0 scales ``2^(s - 127)``): the scale is the smallest
  power of two >= ``amax / 6`` on every backend (ml-explore/mlx#4353, in 0.32.4). On the
  CPU ``amax / 6`` is first rounded to the input dtype, an all-zero group gets ``s = 0`` (scale
  byte 127) and ``s + 127`` wraps modulo 256, and each ``w / 2^s`` takes the nearest e2m1 value
  with ties going to the smaller magnitude (the first minimum of ``|w - lut|``), never -0. On
  CUDA and Metal, ``amax / 6`` stays float32, the byte is the float's exponent rounded up (an
  all-zero group gets byte 0, ``2^-127``), and ``w * 2^-s`` rounds to nearest even, keeping the
  sign of zero.

:func:`quantize` reproduces either set of rules (``like="cpu"`` or ``"gpu"``); by default the
one ``mx.quantize`` follows where the kernel runs (the GPU's on CUDA and Metal, the CPU's under
the CPU emulator). NaN and infinite inputs are not covered (MLX's backends disagree on them).

:func:`dequantize` rounds as MLX's CPU kernel does on every backend: ``q * scale``, then
``+ bias``, each rounded to the output dtype. MLX's CUDA kernel writes the same expression but
lets the compiler fuse it into one multiply-add, so there the two can differ in the last bit.

Kernel: one thread per packed uint32 word (``32 / bits`` elements), so a group is a chunk of
``group_size * bits / 32`` neighbouring lanes of a warp; its minimum/maximum (or largest
magnitude) is reduced with xor shuffles inside the chunk, each lane packs and writes its word
(coalesced), and the chunk's first lane writes the group's scale (and bias).
"""

from __future__ import annotations

import math
from functools import cache

import mlx.core as mx

from ..core import emulate, fallback
from ..core.backend import backend
from ..core.dtypes import FLOAT_DTYPES, check_float
from ..core.kernel import Kernel, grid_1d, scalar
from . import quant_kernels as qk

MODES = {"affine": (64, 4), "mxfp4": (32, 4)}  # mode -> default (group_size, bits), as MLX
KERNEL_BITS = {"affine": (2, 4, 8), "mxfp4": (4,)}
RULES = {"cpu": 0, "gpu": 1}
GROUP = 256  # threads per group

# ---------------------------------------------------------------------------------------
# References


def quantize_ref(w, group_size=None, bits=None, mode="affine"):
    """``mx.quantize``: ``(w_q, scales, biases)`` (affine) or ``(w_q, scales)`` (mxfp4).

    Shapes:
        w: ``(..., D)`` with at least 2 axes -> w_q ``(..., D * bits / 32)`` uint32, scales
        (and biases) ``(..., D / group_size)``.
    """
    # A contiguous copy: MLX 0.32.4's CUDA quantize gave other words and scales for a transposed
    # input than for the same values made contiguous, on an H200 (benchmarks/stock_probes.py
    # records the check); the kernel path reads strides itself.
    return tuple(mx.quantize(mx.contiguous(w), group_size, bits, mode=mode))


def dequantize_ref(w, scales, biases=None, group_size=64, bits=4, mode="affine", dtype=None):
    """``mx.dequantize``. Shapes: ``w (..., N, D * bits / 32)`` -> ``(..., N, D)``."""
    return mx.dequantize(
        w, scales, biases, group_size=group_size, bits=bits, mode=mode, dtype=dtype
    )


# ---------------------------------------------------------------------------------------
# Kernel

HEADER = r"""
// Round half to even (std::rint) and half away from zero (roundf), exactly, from floor.
ZX_INLINE float zq_rint(float x) {
  const float f = zx_floor(x);
  const float d = x - f;
  if (d != 0.5f) { return d > 0.5f ? f + 1.0f : f; }
  return zx_floor(f * 0.5f) * 2.0f == f ? f : f + 1.0f;
}
ZX_INLINE float zq_round(float x) {
  const float a = zx_abs(x);
  float r = zx_floor(a);
  if (a - r >= 0.5f) { r += 1.0f; }
  return x < 0.0f ? -r : r;
}
template <int RULES> ZX_INLINE float zq_rnd(float x) { return RULES == 0 ? zq_rint(x) : zq_round(x); }
// ceil(log2(x)) for a finite x > 0, exactly (subnormals included).
ZX_INLINE int zq_ceil_log2(float x) {
  const uint u = zx_as_uint(x);
  const int e = (int)((u >> 23) & 0xFFu);
  const uint m = u & 0x7FFFFFu;
  if (e != 0) { return e - 127 + (m != 0u ? 1 : 0); }
  int c = 0;
  while ((1u << c) < m) { ++c; }
  return c - 149;
}
// 2^s as a float, for -149 <= s <= 127.
ZX_INLINE float zq_pow2(int s) {
  return s >= -126 ? zx_as_float((uint)(s + 127) << 23) : zx_as_float(1u << (s + 149));
}
// e8m0 byte of x >= 0 rounded up (CUTLASS's float_ue8m0_t, as MLX's CUDA and Metal kernels).
ZX_INLINE uint zq_ue8m0_up(float x) {
  const uint u = zx_as_uint(x);
  uint e = (u >> 23) & 0xFFu;
  const uint m = u & 0x7FFFFFu;
  if (e == 0xFFu) { return 0xFFu; }
  if (m != 0u && e != 0xFEu && !(e == 0u && m <= 0x400000u)) { e += 1u; }
  return e;
}
// e2m1 code of v: nearest with ties to the smaller magnitude and no -0 (MLX's CPU)...
ZX_INLINE uint zq_e2m1_near(float v) {
  const float a = zx_abs(v);
  const uint c = (uint)(a > 0.25f) + (uint)(a > 0.75f) + (uint)(a > 1.25f) + (uint)(a > 1.75f)
      + (uint)(a > 2.5f) + (uint)(a > 3.5f) + (uint)(a > 5.0f);
  return (c != 0u && v < 0.0f) ? (c | 8u) : c;
}
// ...or nearest even, saturating at 6 and keeping the sign of zero (MLX's CUDA and Metal).
ZX_INLINE uint zq_e2m1_rne(float v) {
  const float a = zx_abs(v);
  const uint c = (uint)(a > 0.25f) + (uint)(a >= 0.75f) + (uint)(a > 1.25f) + (uint)(a >= 1.75f)
      + (uint)(a > 2.5f) + (uint)(a >= 3.5f) + (uint)(a > 5.0f);
  return c | ((zx_as_uint(v) >> 28) & 8u);
}
"""

# Loads the thread's word of elements and reduces the group's statistics over its lanes.
_LOAD = """
  constexpr int EPW = 32 / BITS;
  constexpr int L = GROUP_SIZE / EPW;  // lanes per group
  const uint nw = rt[0];
  const uint i = tid;
  const bool live = i < nw;
  float v[EPW];
  float lo = ZX_INF;
  float hi = ZX_NEG_INF;
#pragma unroll
  for (int e = 0; e < EPW; ++e) {
    v[e] = live ? static_cast<float>(w[(size_t)i * EPW + e]) : 0.0f;
    STAT
  }
  // Every lane shuffles (groups never straddle a warp); dead lanes only pad the warp.
#pragma unroll
  for (int m = 1; m < L; m <<= 1) {
    REDUCE
  }
  if (!live) {
    return;
  }
"""

_AFFINE = """
  if (RULES == 1) {
    hi = zx_max(hi, 0.0f);  // MLX's GPU kernels start the maximum at 0
  }
  const float nbins = (float)((1 << BITS) - 1);
  float scale = zx_max((hi - lo) / nbins, 1e-7f);
  const bool side = zx_abs(lo) > zx_abs(hi);
  scale = side ? scale : -scale;
  const float edge = side ? lo : hi;
  const float q0 = zq_rnd<RULES>(edge / scale);
  float bias = 0.0f;
  if (q0 != 0.0f) {
    scale = edge / q0;
    bias = edge;
  }
  uint word = 0u;
#pragma unroll
  for (int e = 0; e < EPW; ++e) {
    const float q = zx_min(zx_max(zq_rnd<RULES>((v[e] - bias) / scale), 0.0f), nbins);
    word |= (uint)q << (e * BITS);
  }
  wq[i] = word;
  if (i % L == 0u) {
    scales[i / L] = static_cast<T>(scale);
    biases[i / L] = static_cast<T>(bias);
  }
"""

_MXFP4 = """
  uint word = 0u;
  uint sbyte;
  if (RULES == 0) {
    const float sc = static_cast<float>(static_cast<T>(hi / 6.0f));
    const int s = sc == 0.0f ? 0 : zq_ceil_log2(sc);
    sbyte = (uint)(s + 127) & 0xFFu;
    const float p = zq_pow2(s);
#pragma unroll
    for (int e = 0; e < EPW; ++e) {
      word |= zq_e2m1_near(v[e] / p) << (e * 4);
    }
  } else {
    sbyte = zq_ue8m0_up(hi / 6.0f);
    const float inv = 1.0f / (sbyte == 0u ? zx_as_float(0x400000u) : zx_as_float(sbyte << 23));
#pragma unroll
    for (int e = 0; e < EPW; ++e) {
      word |= zq_e2m1_rne(v[e] * inv) << (e * 4);
    }
  }
  wq[i] = word;
  if (i % L == 0u) {
    scales[i / L] = static_cast<uint8_t>(sbyte);
  }
"""


@cache
def quantize_kernel(mode: str) -> Kernel:
    """Template constants: ``T`` (input dtype), ``BITS``, ``GROUP_SIZE``, ``RULES`` (0: MLX's
    CPU, 1: its CUDA/Metal kernels). Runtime: ``rt[0]`` = packed words."""
    if mode == "affine":
        stat = "lo = zx_min(lo, v[e]);\n    hi = zx_max(hi, v[e]);"
        red = "lo = zx_min(lo, zx_shfl_xor(lo, m));\n    hi = zx_max(hi, zx_shfl_xor(hi, m));"
        body, outs = _AFFINE, ["wq", "scales", "biases"]
    else:
        stat = "hi = zx_max(hi, zx_abs(v[e]));"
        red = "hi = zx_max(hi, zx_shfl_xor(hi, m));"
        body, outs = _MXFP4, ["wq", "scales"]
    load = _LOAD.replace("STAT", stat).replace("REDUCE", red)
    return Kernel(f"quantize_{mode}", ["w", "rt"], outs, load + body, header=HEADER)


# ---------------------------------------------------------------------------------------
# Public op


def _check(op, w, group_size, bits, mode) -> tuple[int, int]:
    if not isinstance(w, mx.array):
        raise TypeError(f"[{op}] expected 'w' to be an mlx array, got {type(w).__name__}")
    check_float(op, "w", w)
    if w.ndim < 2:
        raise ValueError(f"[{op}] expected 'w' with at least 2 axes, got shape {tuple(w.shape)}")
    if mode not in MODES:
        return group_size, bits  # MLX's own modes (mxfp8, nvfp4) and errors: reference path
    gs = MODES[mode][0] if group_size is None else group_size
    b = MODES[mode][1] if bits is None else bits
    if mode == "mxfp4" and (gs, b) != (32, 4):
        raise ValueError(f"[{op}] expected group_size 32 and bits 4 for mxfp4, got {gs}, {b}")
    if mode == "affine" and (gs not in (32, 64, 128) or b not in (2, 3, 4, 5, 6, 8)):
        raise ValueError(
            f"[{op}] expected group_size in (32, 64, 128) and bits in (2, 3, 4, 5, 6, 8), "
            f"got {gs}, {b}"
        )
    if w.shape[-1] % gs:
        raise ValueError(
            f"[{op}] expected the last axis of 'w' to be a multiple of group_size {gs}, got "
            f"{w.shape[-1]}"
        )
    return gs, b


def quantize(w, group_size=None, bits=None, mode="affine", *, like=None, verbose=False):
    """Quantize ``w`` as ``mx.quantize`` does, bit for bit (see the module docstring).

    Args:
        w: the float32/float16/bfloat16 weight (or activation) to quantize.
        group_size: elements per scale (default 64 for affine, 32 for mxfp4).
        bits: bits per element (default 4). The kernel covers affine 2/4/8-bit and mxfp4;
            affine 3/5/6-bit, mxfp8 and nvfp4 take ``mx.quantize``.
        mode: ``"affine"`` or ``"mxfp4"`` (others go to ``mx.quantize``).
        like: whose ``mx.quantize`` the kernel reproduces: ``"cpu"`` (MLX's CPU kernel) or
            ``"gpu"`` (its CUDA and Metal kernels). Default: the one that computes it: the
            GPU's on CUDA and Metal, the CPU's under the CPU emulator. The reference path
            (CPU backend) is ``mx.quantize`` itself.
        verbose: print why the reference path was taken, if it was.

    Returns:
        ``(w_q, scales, biases)`` for affine, ``(w_q, scales)`` for mxfp4 (uint8 e8m0 scales).

    Shapes:
        w: ``(..., D)`` -> w_q ``(..., D * bits / 32)`` uint32; scales, biases
        ``(..., D / group_size)``.
    """
    op = "quantize"
    gs, b = _check(op, w, group_size, bits, mode)
    if like is not None and like not in RULES:
        raise ValueError(f"[{op}] expected like in {tuple(RULES)} or None, got {like!r}")
    if backend() == "cpu" or w.size == 0:
        return quantize_ref(w, group_size, bits, mode)
    if mode not in MODES or b not in KERNEL_BITS[mode]:
        fallback.note(op, f"no kernel for mode={mode} bits={b}", verbose=verbose)
        return quantize_ref(w, group_size, bits, mode)
    rules = RULES[like] if like else (0 if emulate.active() else 1)
    words = w.size * b // 32
    lead = tuple(w.shape[:-1])
    gshape = lead + (w.shape[-1] // gs,)
    sdt = w.dtype if mode == "affine" else mx.uint8
    grid, tg = grid_1d(words, GROUP)
    affine = mode == "affine"
    outs = quantize_kernel(mode)(
        w,
        scalar(words, mx.uint32),
        output_shapes=[lead + (w.shape[-1] * b // 32,), gshape] + ([gshape] if affine else []),
        output_dtypes=[mx.uint32, sdt] + ([w.dtype] if affine else []),
        grid=grid,
        threadgroup=tg,
        template=[("T", w.dtype), ("BITS", b), ("GROUP_SIZE", gs), ("RULES", rules)],
    )
    return tuple(outs)


def dequantize(w, scales, biases=None, group_size=64, bits=4, mode="affine", dtype=None):
    """Dequantize like ``mx.dequantize`` on MLX's CPU (``q * scale`` then ``+ bias``, each
    rounded to T; see the module doc for MLX's CUDA kernel).

    Shapes:
        w: ``(..., N, D * bits / 32)`` uint32; scales/biases: ``(..., N, D / group_size)``
        -> ``(..., N, D)`` in the scales' dtype (affine) or ``dtype`` (mxfp4, default bf16).
    """
    op = "dequantize"
    if not isinstance(w, mx.array) or w.dtype != mx.uint32 or w.ndim < 2:
        raise ValueError(f"[{op}] expected a uint32 array of at least 2 axes for 'w'")
    out_dtype = dtype or (scales.dtype if mode == "affine" else mx.bfloat16)
    if backend() == "cpu" or out_dtype not in FLOAT_DTYPES:
        return dequantize_ref(w, scales, biases, group_size, bits, mode, dtype)
    reason = None if qk.kernel_covers(mode, bits, group_size) else f"mode={mode} bits={bits}"
    if mode == "affine" and scales.dtype != out_dtype:
        reason = "dtype differs from the scales' dtype"
    if reason:
        fallback.note(op, reason)
        return dequantize_ref(w, scales, biases, group_size, bits, mode, dtype)
    d = w.shape[-1] * 32 // bits
    ins = [w, scales] + ([biases] if mode == "affine" else [])
    grid, tg = qk.launch_shape(math.ceil(w.size / 32))
    return qk.dequant_kernel(mode)(
        *ins,
        scalar(w.size, mx.int32),
        output_shapes=[w.shape[:-1] + (d,)],
        output_dtypes=[out_dtype],
        grid=grid,
        threadgroup=tg,
        template=[("T", out_dtype), ("BITS", bits), ("GROUP_SIZE", group_size)],
    )[0]


__all__ = ["dequantize", "dequantize_ref", "quantize", "quantize_ref"]
