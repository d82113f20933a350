"""Rotary position embeddings with ``mx.fast.rope``'s semantics.

``x`` is ``(B, *, T, D)`` (usually ``(B, heads, T, head_dim)``; q and k may have different head
counts, as with GQA). Position ``t`` of batch ``b`` is ``scale * (t + offset[b])``; pair ``i``
(``0 <= i < dims / 2``) turns by ``position * inv_freq[i]``, with
``inv_freq[i] = base ** (-i / (dims / 2))`` or ``1 / freqs[i]``. ``traditional=True``
rotates interleaved pairs ``(2i, 2i + 1)``, otherwise the split halves ``(i, i + dims / 2)``.
Features past ``dims`` pass through unchanged (partial rotary).

The inverse frequencies for a ``base`` are computed once on the host the way MLX's GPU kernels
compute them (float32 ``exp2(-(i / half) * log2(base))``) and passed as an array; offsets
(int or int array) and ``scale`` are runtime values, so a new decode position never rebuilds
a kernel. Each thread rotates one pair for up to ``HEADS`` heads, sharing its sin/cos. The
input is read through its strides (the ``(B, L, H, D) -> (B, H, L, D)`` transpose of an
attention layer costs no copy); the output is row-contiguous.
"""

from __future__ import annotations

import math
from functools import cache

import mlx.core as mx
import numpy as np

from ..core.backend import backend
from ..core.kernel import Kernel, grid_1d, scalar
from ._common import as_list, check_array, dims, vector
from .catalog import KernelSpec, register

HEADS = 4  # heads per thread (they share one sin/cos); as in MLX's own kernel
_GROUP = 256


@cache
def inv_freqs(dims_: int, base: float) -> mx.array:
    """``base ** (-i / (dims / 2))`` for ``i < dims / 2`` in float32, as MLX's GPU kernels
    compute it (float32 ``exp2`` of ``-(i / half) * log2(base)``)."""
    half = dims_ // 2
    d = np.arange(half, dtype=np.float32) / np.float32(half)
    return mx.array(np.exp2(-d * np.float32(math.log2(base))).astype(np.float32))


def _freq_input(dims_: int, base: float | None, freqs: mx.array | None) -> tuple[mx.array, bool]:
    """``(array, holds_inverse)``: cached inverse frequencies for a base, or ``freqs`` itself."""
    if freqs is None:
        return inv_freqs(dims_, float(base)), True
    return (freqs if freqs.dtype == mx.float32 else freqs.astype(mx.float32)), False


def _offsets(op: str, offset, batch: int) -> mx.array:
    if isinstance(offset, (int, np.integer)) and not isinstance(offset, bool):
        return scalar(int(offset), mx.int32)
    if not isinstance(offset, mx.array) or not mx.issubdtype(offset.dtype, mx.integer):
        raise TypeError(f"[{op}] expected an int or an integer array offset, got {offset!r}")
    if offset.ndim > 1 or offset.size not in (1, batch):
        raise ValueError(
            f"[{op}] expected a scalar offset or one per batch ({batch}), got shape "
            f"{tuple(offset.shape)}"
        )
    return offset.reshape(-1) if offset.dtype == mx.int32 else offset.reshape(-1).astype(mx.int32)


def rotate_ref(x, dims_, traditional, fr, is_inv, scale, off, forward=True) -> mx.array:
    """The rotation in MLX ops, float32 math (``off``: int32 array of 1 or B offsets)."""
    t, d = x.shape[-2], x.shape[-1]
    half = dims_ // 2
    inv = fr if is_inv else 1.0 / fr
    pos = (mx.arange(t, dtype=mx.int32) + off.reshape(-1, 1)).astype(mx.float32) * scale
    theta = pos[..., None] * inv  # (1 or B, T, half)
    theta = theta.reshape((theta.shape[0],) + (1,) * (x.ndim - 3) + theta.shape[1:])
    c, s = mx.cos(theta), mx.sin(theta)
    if not forward:
        s = -s
    xf = x.astype(mx.float32)
    if traditional:
        pairs = xf[..., :dims_].reshape(x.shape[:-1] + (half, 2))
        x1, x2 = pairs[..., 0], pairs[..., 1]
        rot = mx.stack([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1).reshape(x.shape[:-1] + (dims_,))
    else:
        x1, x2 = xf[..., :half], xf[..., half:dims_]
        rot = mx.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
    out = rot if dims_ == d else mx.concatenate([rot, xf[..., dims_:]], axis=-1)
    return out.astype(x.dtype)


def rope_ref(
    x: mx.array,
    dims: int,
    traditional: bool = False,
    base: float | None = 10000.0,
    scale: float = 1.0,
    offset: int | mx.array = 0,
    freqs: mx.array | None = None,
) -> mx.array:
    """RoPE in MLX ops (float32 angles and rotation, output in ``x``'s dtype).

    Shapes:
        x: ``(B, *, T, D)``; offset: ``()`` or ``(B,)``; freqs: ``(dims / 2,)`` -> ``x.shape``.
    """
    fr, is_inv = _freq_input(dims, base if freqs is None else None, freqs)
    off = _offsets("rope", offset, x.shape[0])
    return rotate_ref(x, dims, traditional, fr, is_inv, scale, off)


_BODY = """
  const uint B = zx_dims[0], H = zx_dims[1], T = zx_dims[2], D = zx_dims[3];
  const uint half = zx_dims[4], P = zx_dims[5], HC = zx_dims[6];
  // Run-time flags (uniform branches): one build per dtype serves every variant.
  const bool TRAD = zx_dims[7] != 0u, FWD = zx_dims[8] != 0u;
  const bool INV = zx_dims[9] != 0u, OFFV = zx_dims[10] != 0u;
  if (tid >= B * HC * T * P) { return; }
  const uint i = tid % P;
  uint r = tid / P;
  const uint t = r % T;
  r /= T;
  const uint hc = r % HC;
  const uint b = r / HC;
  const long xs = ZX_STRIDES(x)[ZX_NDIM(x) - 1];
  float c = 1.0f, s = 0.0f;
  uint j1, j2;
  const bool rot = i < half;
  if (rot) {
    const float inv = INV ? fr[i] : 1.0f / fr[i];
    const int o = off[OFFV ? b : 0u];
    const float theta = (prm[0] * (float)((int)t + o)) * inv;
    c = zx_cos(theta);
    s = FWD ? zx_sin(theta) : -zx_sin(theta);
    j1 = TRAD ? 2u * i : i;
    j2 = TRAD ? 2u * i + 1u : i + half;
  } else {
    j1 = 2u * half + (i - half);
    j2 = j1;
  }
  const uint h_end = (hc + 1u) * (uint)HEADS < H ? (hc + 1u) * (uint)HEADS : H;
  for (uint h = hc * (uint)HEADS; h < h_end; ++h) {
    const long row = ((long)b * H + h) * T + t;
    const long loc = zx_elem_to_loc(row, ZX_SHAPE(x), ZX_STRIDES(x), ZX_NDIM(x) - 1);
    const float x1 = static_cast<float>(x[loc + j1 * xs]);
    if (rot) {
      const float x2 = static_cast<float>(x[loc + j2 * xs]);
      out[row * D + j1] = static_cast<O>(x1 * c - x2 * s);
      out[row * D + j2] = static_cast<O>(x1 * s + x2 * c);
    } else {
      out[row * D + j1] = static_cast<O>(x1);
    }
  }
"""

KERNEL = Kernel(
    "rope", ["x", "off", "fr", "prm", "zx_dims"], ["out"], _BODY, ensure_row_contiguous=False
)


def run_rope(x, dims_, traditional, fr, is_inv, scale, off, forward=True) -> mx.array:
    """Launch the rope kernel (any strides in, row-contiguous out)."""
    b, t, d = x.shape[0], x.shape[-2], x.shape[-1]
    h = x.size // (b * t * d) if x.size else 0
    half = dims_ // 2
    p, hc = half + (d - dims_), math.ceil(h / HEADS)
    n = b * hc * t * p
    grid, group = grid_1d(n, _GROUP)
    (out,) = KERNEL(
        x,
        off,
        fr,
        vector([scale], mx.float32),
        dims(b, h, t, d, half, p, hc, traditional, forward, is_inv, off.size > 1),
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
        grid=grid,
        threadgroup=group,
        template=[("O", x.dtype), ("HEADS", HEADS)],
    )
    return out


@cache
def _function(dims_: int, traditional: bool, is_inv: bool, scale: float):
    def rotate(x, off, fr, forward):
        if backend() == "cpu" or x.size >= 2**31:
            return rotate_ref(x, dims_, traditional, fr, is_inv, scale, off, forward)
        return run_rope(x, dims_, traditional, fr, is_inv, scale, off, forward)

    fn = mx.custom_function(lambda x, off, fr: rotate(x, off, fr, True))

    @fn.vjp
    def fn_vjp(primals, cotangent, output):
        x, off, fr = as_list(primals)
        g = rotate(as_list(cotangent)[0], off, fr, False)  # a rotation's VJP: turn back
        return g, mx.zeros_like(off), mx.zeros_like(fr)

    return fn


def check_rope_args(op, x, dims_, base, freqs, name="x") -> None:
    check_array(op, name, x, min_ndim=3)
    d = x.shape[-1]
    if not isinstance(dims_, int) or dims_ <= 0 or dims_ % 2 or dims_ > d:
        raise ValueError(f"[{op}] expected even dims with 0 < dims <= {d}, got {dims_!r}")
    if (base is None) == (freqs is None):
        raise ValueError(f"[{op}] expected exactly one of base and freqs, got base={base!r}")
    if freqs is not None and (freqs.ndim != 1 or freqs.shape[0] != dims_ // 2):
        raise ValueError(
            f"[{op}] expected freqs of shape ({dims_ // 2},), got {tuple(freqs.shape)}"
        )


def rope(
    x: mx.array,
    dims: int,
    traditional: bool = False,
    base: float | None = 10000.0,
    scale: float = 1.0,
    offset: int | mx.array = 0,
    freqs: mx.array | None = None,
) -> mx.array:
    """Rotary position embedding, as ``mx.fast.rope``.

    Args:
        x: queries or keys, positions on axis -2 and features on axis -1.
        dims: features to rotate (even); the rest pass through.
        traditional: rotate interleaved pairs ``(2i, 2i + 1)`` instead of split halves.
        base: frequency base (``None`` when ``freqs`` is given).
        scale: position scale.
        offset: position of the first token: an int, or an int array of one or ``B`` values.
        freqs: optional frequencies ``(dims / 2,)``; the angle is ``position / freqs[i]``.

    Returns:
        The rotated array, row-contiguous, in ``x``'s dtype.

    Shapes:
        x: ``(B, *, T, D)``; offset: ``()`` or ``(B,)``; freqs: ``(dims / 2,)`` -> ``x.shape``.
    """
    check_rope_args("rope", x, dims, None if freqs is not None else base, freqs)
    off = _offsets("rope", offset, x.shape[0])
    fr, is_inv = _freq_input(dims, base, freqs)
    if x.size == 0:
        return x
    return _function(dims, bool(traditional), is_inv, float(scale))(x, off, fr)


# ---------------------------------------------------------------------------------------
# Catalog entry


def _make(case, dtype, rng):
    b, h, t, d = case["shape"]
    if case.get("layout") == "blhd":  # an attention layer's transposed projection
        x = mx.array(rng.normal(size=(b, t, h, d)).astype(np.float32)).astype(dtype)
        x = x.transpose(0, 2, 1, 3)
    else:
        x = mx.array(rng.normal(size=(b, h, t, d)).astype(np.float32)).astype(dtype)
    dims_ = case.get("dims", d)
    offset = case.get("offset", 0)
    if case.get("per_batch"):
        offset = mx.array(np.arange(b) * 7 + offset, dtype=mx.int32)
    freqs = None
    if case.get("freqs"):
        freqs = mx.array((10000.0 ** (np.arange(dims_ // 2) / (dims_ // 2)) * 1.5).astype("f4"))
    base = None if freqs is not None else case.get("base", 10000.0)
    return x, dims_, case.get("traditional", False), base, case.get("scale", 1.0), offset, freqs


def _stock(x, dims_, traditional, base, scale, offset, freqs):
    return mx.fast.rope(
        x, dims_, traditional=traditional, base=base, scale=scale, offset=offset, freqs=freqs
    )


register(
    KernelSpec(
        name="rope",
        family="rope",
        op=rope,
        ref=rope_ref,
        make_inputs=_make,
        cases=(
            {"id": "decode-1x4x1x64", "shape": (1, 4, 1, 64), "offset": 37},
            {"id": "traditional-2x3x5x32", "shape": (2, 3, 5, 32), "traditional": True},
            {"id": "partial-1x2x7x33", "shape": (1, 2, 7, 33), "dims": 16, "offset": 3},
            {
                "id": "partial-trad-2x5x3x40",
                "shape": (2, 5, 3, 40),
                "dims": 24,
                "traditional": True,
            },
            {"id": "blhd-transposed", "shape": (2, 6, 9, 16), "layout": "blhd", "offset": 5},
            {"id": "per-batch-offsets", "shape": (3, 2, 4, 16), "per_batch": True, "offset": 2},
            {"id": "freqs-scale", "shape": (1, 3, 6, 32), "freqs": True, "scale": 0.5},
            {"id": "prefill-1x4x64x128", "shape": (1, 4, 64, 128), "base": 1e6},
            {"id": "long-offset", "shape": (1, 1, 2, 128), "offset": 31000, "base": 5e5},
        ),
        bench_cases=(
            {"id": "decode-q-32h", "shape": (1, 32, 1, 128), "offset": 4096, "layout": "blhd"},
            {"id": "decode-k-4h", "shape": (1, 4, 1, 128), "offset": 4096, "layout": "blhd"},
            {"id": "prefill-q-32h", "shape": (1, 32, 2048, 128), "layout": "blhd"},
            {"id": "prefill-k-4h", "shape": (1, 4, 2048, 128), "layout": "blhd"},
        ),
        stock=_stock,
        grad_argnums=(0,),
        description="rotary embedding as mx.fast.rope: split/interleaved, partial, freqs, "
        "per-batch runtime offsets, strided input",
    )
)

from . import qk_norm_rope as _qk_norm_rope  # noqa: E402,F401  (registers qk_norm_rope)
from . import rope_cache as _rope_cache  # noqa: E402,F401  (registers rope_qk_cache_update)
