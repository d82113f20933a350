"""Counter-based randomness: ``dropout`` whose mask is a pure function of (seed, element index).

Element ``i`` (row-major index into ``x``, whatever its strides) draws
``u = mix(mix(i + k1) ^ k2)``, where ``mix`` is a 32-bit integer hash (xor-shift and
multiply rounds, "lowbias32") and ``k1, k2`` are hashed from the seed. The element is dropped
when ``u < floor(p * 2^32)``; kept elements are scaled by ``1 / (1 - p)`` in float32. The
reference runs the same hash as MLX uint32 ops (which wrap like the kernel's), so the mask
and the output are the same bit for bit on the CPU, CUDA and Metal, and the VJP applies the
very mask of the forward pass. Indices wrap past 2^32 elements.

``seed`` and ``p`` are runtime values: a new seed every step never rebuilds the kernel.
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx
import numpy as np

from ..core.backend import backend
from ..core.kernel import Kernel, scalar
from ._common import VEC, as_list, check_array, vec_grid, vec_loop, vector
from .catalog import KernelSpec, register

_M32 = 0xFFFFFFFF
_C1, _C2 = 0x7FEB352D, 0x846CA68B


def _mix_int(x: int) -> int:
    x &= _M32
    x ^= x >> 16
    x = (x * _C1) & _M32
    x ^= x >> 15
    x = (x * _C2) & _M32
    return x ^ (x >> 16)


def seed_keys(seed: int) -> tuple[int, int]:
    """The two 32-bit keys of a seed (any Python int; 64-bit seeds fold their high half in)."""
    seed = int(seed)
    lo, hi = seed & _M32, (seed >> 32) & _M32
    k1 = _mix_int(lo ^ _mix_int(hi ^ 0x9E3779B9))
    return k1, _mix_int(k1 ^ 0x85EBCA6B)


def threshold(p: float) -> int:
    """Drop an element when its draw is below this (``floor(p * 2^32)``, for ``0 <= p < 1``)."""
    return min(int(np.floor(float(p) * 2.0**32)), _M32)


def _mix(x: mx.array) -> mx.array:
    x = x ^ (x >> 16)
    x = x * mx.array(_C1, dtype=mx.uint32)
    x = x ^ (x >> 15)
    x = x * mx.array(_C2, dtype=mx.uint32)
    return x ^ (x >> 16)


def random_bits_ref(shape, seed: int) -> mx.array:
    """The uint32 draw of every element of an array of ``shape`` (MLX uint32 ops).

    Shapes:
        -> ``shape``.
    """
    k1, k2 = (mx.array(k, dtype=mx.uint32) for k in seed_keys(seed))
    n = int(np.prod(shape)) if len(shape) else 1
    i = mx.arange(n, dtype=mx.uint32).reshape(shape)
    return _mix(_mix(i + k1) ^ k2)


def dropout_ref(x: mx.array, p: float, seed: int) -> mx.array:
    """Dropout with the counter-based mask, in MLX ops.

    Shapes:
        x: any -> same.
    """
    if p == 0:
        return x
    if p >= 1:
        return mx.zeros_like(x)
    keep = random_bits_ref(x.shape, seed) >= threshold(p)
    scale = mx.array(np.float32(1.0 / (1.0 - p)))
    return mx.where(keep, x.astype(mx.float32) * scale, 0.0).astype(x.dtype)


_BODY = vec_loop("""
      const uint u = zx_mix32(zx_mix32(i + prm[0]) ^ prm[1]);
      const float y = u >= prm[2] ? static_cast<float>(x[i]) * sc[0] : 0.0f;
      out[i] = static_cast<O>(y);""")
_HEADER = """
ZX_INLINE uint zx_mix32(uint x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  return x ^ (x >> 16);
}
"""
KERNEL = Kernel("dropout", ["x", "prm", "sc", "zx_n"], ["out"], _BODY, header=_HEADER)


def _run(x: mx.array, prm: mx.array, sc: mx.array) -> mx.array:
    if backend() == "cpu" or x.size >= 2**31:
        keep = _mix(_mix(mx.arange(x.size, dtype=mx.uint32) + prm[0]) ^ prm[1]) >= prm[2]
        y = mx.where(keep.reshape(x.shape), x.astype(mx.float32) * sc[0], 0.0)
        return y.astype(x.dtype)
    grid, group = vec_grid(x.size)
    (out,) = KERNEL(
        x,
        prm,
        sc,
        scalar(x.size, mx.uint32),
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
        grid=grid,
        threadgroup=group,
        template=[("O", x.dtype), ("VEC", VEC)],
    )
    return out


@cache
def _function():
    fn = mx.custom_function(_run)

    @fn.vjp
    def fn_vjp(primals, cotangent, output):
        _, prm, sc = as_list(primals)
        return _run(as_list(cotangent)[0], prm, sc), mx.zeros_like(prm), mx.zeros_like(sc)

    return fn


def dropout(x: mx.array, p: float, seed: int) -> mx.array:
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    The mask depends only on ``seed`` and each element's row-major index (module docstring),
    so it is reproducible and the same on every backend; the gradient uses the same mask.

    Args:
        x: input.
        p: drop probability in ``[0, 1]`` (``1`` drops everything).
        seed: integer seed; use a new one per step.

    Returns:
        The masked, rescaled array in ``x``'s dtype.

    Shapes:
        x: any -> same.
    """
    check_array("dropout", "x", x, min_ndim=0)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"[dropout] expected 0 <= p <= 1, got {p!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"[dropout] expected an integer seed, got {seed!r}")
    if p == 0 or x.size == 0:
        return x
    if p >= 1:
        return mx.zeros_like(x)
    prm = vector((*seed_keys(seed), threshold(p)), mx.uint32)
    sc = vector([float(np.float32(1.0 / (1.0 - p)))], mx.float32)
    return _function()(x, prm, sc)


def _make(case, dtype, rng):
    shape = case["shape"]
    x = mx.array(rng.normal(size=shape[::-1] if case.get("transpose") else shape).astype("f4"))
    x = x.astype(dtype)
    return (x.T if case.get("transpose") else x), case.get("p", 0.1), case.get("seed", 1234)


register(
    KernelSpec(
        name="dropout",
        family="random",
        op=dropout,
        ref=dropout_ref,
        make_inputs=_make,
        cases=(
            {"id": "1", "shape": (1,), "p": 0.5},
            {"id": "31", "shape": (31,), "seed": 2**40 + 7},
            {"id": "33x3", "shape": (3, 33), "p": 0.9},
            {"id": "4097", "shape": (4097,), "p": 0.25, "seed": 0},
            {"id": "transposed", "shape": (17, 9), "transpose": True},
            {"id": "decode", "shape": (1, 1, 4096)},
            {"id": "prefill", "shape": (2, 64, 256), "p": 0.05},
        ),
        bench_cases=(
            {"id": "decode", "shape": (1, 1, 4096)},
            {"id": "prefill", "shape": (1, 2048, 4096)},
        ),
        stock=lambda x, p, seed: mx.where(
            mx.random.bernoulli(1 - p, x.shape, key=mx.random.key(seed)), x / (1 - p), 0
        ).astype(x.dtype),
        grad_argnums=(0,),
        description="dropout with a counter-based (seed, index) hash: same mask on every backend",
    )
)
