"""Image ops on NHWC arrays: bilinear resize and 3x3 depthwise convolution.

``resize_bilinear`` follows ``mlx.nn.Upsample(mode="linear")``: with ``align_corners=False``
output pixel ``o`` samples input coordinate ``(o + 0.5) * in / out - 0.5`` (half-pixel
centres), with ``True`` it samples ``o * (in - 1) / (out - 1)``; coordinates are clamped to
``[0, in - 1]``. Any output size works (not only integer scale factors).
``depthwise_conv3x3`` is ``mx.conv2d(x, w, stride, padding, groups=C)`` (+ bias) with MLX's
weight layout ``(C, 3, 3, 1)``. Both compute in float32, write the input dtype (promoted
with the weight's), take stride/padding and sizes as runtime values, and differentiate their
references.
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx

from ..core.backend import backend
from ..core.dtypes import promote
from ..core.kernel import Kernel, grid_1d
from ._common import as_list, check_array, check_vector, dims, vector
from .catalog import KernelSpec, register

_GROUP = 256

# One thread per output element (n, oy, ox, c) of an NHWC output; zx_dims starts with
# N, H, W, C, OH, OW.
_NHWC_OUT = """
  const uint N = zx_dims[0], H = zx_dims[1], W = zx_dims[2], C = zx_dims[3];
  const uint OH = zx_dims[4], OW = zx_dims[5];
  if (tid >= N * OH * OW * C) { return; }
  const uint c = tid % C;
  uint r = tid / C;
  const uint ox = r % OW;
  r /= OW;
  const uint oy = r % OH;
  const uint n = r / OH;
"""


def _coords(n_in: int, n_out: int, align: bool):
    o = mx.arange(n_out, dtype=mx.float32)
    if align:
        s = o * ((n_in - 1) / (n_out - 1)) if n_out > 1 else mx.zeros_like(o)
    else:
        s = (o + 0.5) * (n_in / n_out) - 0.5
    s = mx.clip(s, 0, n_in - 1)
    i0 = mx.floor(s)
    w = s - i0
    i0 = i0.astype(mx.int32)
    return i0, mx.minimum(i0 + 1, n_in - 1), w


def resize_bilinear_ref(x: mx.array, out_h: int, out_w: int, align_corners: bool = False):
    """Bilinear resize in MLX ops (rows, then columns; float32).

    Shapes:
        x: ``(N, H, W, C)`` -> ``(N, out_h, out_w, C)``.
    """
    y0, y1, wy = _coords(x.shape[1], out_h, align_corners)
    x0, x1, wx = _coords(x.shape[2], out_w, align_corners)
    xf = x.astype(mx.float32)
    wy, wx = wy[:, None, None], wx[:, None]
    rows0, rows1 = mx.take(xf, y0, axis=1), mx.take(xf, y1, axis=1)
    a = mx.take(rows0, x0, axis=2) * (1 - wy) + mx.take(rows1, x0, axis=2) * wy
    b = mx.take(rows0, x1, axis=2) * (1 - wy) + mx.take(rows1, x1, axis=2) * wy
    return (a * (1 - wx) + b * wx).astype(x.dtype)


RESIZE = Kernel(
    "resize_bilinear",
    ["x", "prm", "zx_dims"],
    ["out"],
    _NHWC_OUT
    + """
  const bool ALIGN = zx_dims[6] != 0u;  // run time: one build per dtype
  float sy = ALIGN ? (float)oy * prm[0] : ((float)oy + 0.5f) * prm[0] - 0.5f;
  float sx = ALIGN ? (float)ox * prm[1] : ((float)ox + 0.5f) * prm[1] - 0.5f;
  sy = zx_min(zx_max(sy, 0.0f), (float)(H - 1u));
  sx = zx_min(zx_max(sx, 0.0f), (float)(W - 1u));
  const float fy = zx_floor(sy), fx = zx_floor(sx);
  const float wy = sy - fy, wx = sx - fx;
  const uint y0 = (uint)fy, x0 = (uint)fx;
  const uint y1 = y0 + 1u < H ? y0 + 1u : H - 1u;
  const uint x1 = x0 + 1u < W ? x0 + 1u : W - 1u;
  const long img = (long)n * H * W * C;
  const float v00 = static_cast<float>(x[img + ((long)y0 * W + x0) * C + c]);
  const float v01 = static_cast<float>(x[img + ((long)y0 * W + x1) * C + c]);
  const float v10 = static_cast<float>(x[img + ((long)y1 * W + x0) * C + c]);
  const float v11 = static_cast<float>(x[img + ((long)y1 * W + x1) * C + c]);
  const float a = v00 * (1.0f - wy) + v10 * wy;
  const float b = v01 * (1.0f - wy) + v11 * wy;
  out[tid] = static_cast<O>(a * (1.0f - wx) + b * wx);
""",
)


def _resize_scale(n_in: int, n_out: int, align: bool) -> float:
    if align:
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return n_in / n_out


@cache
def _resize_fn(out_h: int, out_w: int, align: bool):
    def forward(x):
        n, h, w, c = x.shape
        total = n * out_h * out_w * c
        if backend() == "cpu" or total >= 2**31 or x.size >= 2**31:
            return resize_bilinear_ref(x, out_h, out_w, align)
        grid, group = grid_1d(total, _GROUP)
        prm = vector([_resize_scale(h, out_h, align), _resize_scale(w, out_w, align)], mx.float32)
        (out,) = RESIZE(
            x,
            prm,
            dims(n, h, w, c, out_h, out_w, align),
            output_shapes=[(n, out_h, out_w, c)],
            output_dtypes=[x.dtype],
            grid=grid,
            threadgroup=group,
            template=[("O", x.dtype)],
        )
        return out

    fn = mx.custom_function(forward)

    @fn.vjp
    def fn_vjp(primals, cotangent, output):
        x = as_list(primals)[0]
        ref = lambda x: resize_bilinear_ref(x, out_h, out_w, align)  # noqa: E731
        return mx.vjp(ref, [x], [as_list(cotangent)[0]])[1][0]

    return fn


def resize_bilinear(x: mx.array, out_h: int, out_w: int, align_corners: bool = False) -> mx.array:
    """Bilinear resize of NHWC images to ``(out_h, out_w)`` (see the module docstring).

    Args:
        x: images, channels last.
        out_h, out_w: output size (any positive integers).
        align_corners: map corner pixel centres onto each other.

    Returns:
        The resized images in ``x``'s dtype.

    Shapes:
        x: ``(N, H, W, C)`` -> ``(N, out_h, out_w, C)``.
    """
    check_array("resize_bilinear", "x", x, min_ndim=4)
    if x.ndim != 4 or min(x.shape) == 0:
        raise ValueError(f"[resize_bilinear] expected non-empty (N, H, W, C), got {x.shape}")
    for name, v in (("out_h", out_h), ("out_w", out_w)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"[resize_bilinear] expected a positive int {name}, got {v!r}")
    return _resize_fn(out_h, out_w, bool(align_corners))(x)


# ---------------------------------------------------------------------------------------
# depthwise_conv3x3


def _out_size(n: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - 3) // stride + 1


def depthwise_conv3x3_ref(x, w, b=None, stride: int = 1, padding: int = 1) -> mx.array:
    """The 3x3 depthwise convolution as nine shifted products (MLX ops, float32).

    Shapes:
        x: ``(N, H, W, C)``; w: ``(C, 3, 3, 1)``; b: ``(C,)`` -> ``(N, OH, OW, C)``.
    """
    n, h, wd, c = x.shape
    oh, ow = _out_size(h, stride, padding), _out_size(wd, stride, padding)
    xp = mx.pad(x.astype(mx.float32), [(0, 0), (padding, padding), (padding, padding), (0, 0)])
    wf = w.reshape(c, 3, 3).astype(mx.float32)
    acc = mx.zeros((n, oh, ow, c), mx.float32)
    for ky in range(3):
        for kx in range(3):
            tap = xp[
                :,
                ky : ky + (oh - 1) * stride + 1 : stride,
                kx : kx + (ow - 1) * stride + 1 : stride,
            ]
            acc = acc + tap * wf[:, ky, kx]
    if b is not None:
        acc = acc + b.astype(mx.float32)
    return acc.astype(promote(a.dtype for a in (x, w, b) if a is not None))


DEPTHWISE = Kernel(
    "depthwise_conv3x3",
    ["x", "w", "b", "zx_dims"],
    ["out"],
    _NHWC_OUT
    + """
  const uint S = zx_dims[6], P = zx_dims[7];
  const bool HAS_B = zx_dims[8] != 0u;  // run time: one build per dtype
  const long img = (long)n * H * W * C;
  float acc = HAS_B ? static_cast<float>(b[c]) : 0.0f;
  #pragma unroll
  for (int ky = 0; ky < 3; ++ky) {
    const int iy = (int)(oy * S) - (int)P + ky;
    if (iy < 0 || iy >= (int)H) { continue; }
    #pragma unroll
    for (int kx = 0; kx < 3; ++kx) {
      const int ix = (int)(ox * S) - (int)P + kx;
      if (ix < 0 || ix >= (int)W) { continue; }
      acc += static_cast<float>(x[img + ((long)iy * W + ix) * C + c])
          * static_cast<float>(w[c * 9u + (uint)(ky * 3 + kx)]);
    }
  }
  out[tid] = static_cast<O>(acc);
""",
)


@cache
def _depthwise_fn(has_b: bool, stride: int, padding: int):
    def ref(x, w, b=None):
        return depthwise_conv3x3_ref(x, w, b, stride, padding)

    def forward(*arrays):
        x, w = arrays[0], arrays[1]
        b = arrays[2] if has_b else None
        n, h, wd, c = x.shape
        oh, ow = _out_size(h, stride, padding), _out_size(wd, stride, padding)
        total = n * oh * ow * c
        if backend() == "cpu" or total >= 2**31 or x.size >= 2**31:
            return ref(*arrays)
        dtype = promote(a.dtype for a in arrays)
        grid, group = grid_1d(total, _GROUP)
        (out,) = DEPTHWISE(
            x,
            w,
            b if has_b else w,  # any array: never read without a bias
            dims(n, h, wd, c, oh, ow, stride, padding, has_b),
            output_shapes=[(n, oh, ow, c)],
            output_dtypes=[dtype],
            grid=grid,
            threadgroup=group,
            template=[("O", dtype)],
        )
        return out

    fn = mx.custom_function(forward)

    @fn.vjp
    def fn_vjp(primals, cotangent, output):
        prims = as_list(primals)
        grads = mx.vjp(ref, prims, [as_list(cotangent)[0]])[1]
        return tuple(g.astype(p.dtype) for g, p in zip(grads, prims))

    return fn


def depthwise_conv3x3(
    x: mx.array, w: mx.array, b: mx.array | None = None, stride: int = 1, padding: int = 1
) -> mx.array:
    """3x3 depthwise convolution of NHWC images (``mx.conv2d(..., groups=C)`` semantics).

    Args:
        x: images, channels last.
        w: one 3x3 filter per channel, MLX's layout ``(C, 3, 3, 1)`` (``(C, 3, 3)`` accepted).
        b: optional per-channel bias ``(C,)``.
        stride: step between output pixels (runtime value).
        padding: zero padding on each side (runtime value).

    Returns:
        The convolved images, float32 accumulation, in the promoted dtype.

    Shapes:
        x: ``(N, H, W, C)``; w: ``(C, 3, 3, 1)`` -> ``(N, (H + 2p - 3) // s + 1, ..., C)``.
    """
    op = "depthwise_conv3x3"
    check_array(op, "x", x, min_ndim=4)
    check_array(op, "w", w, min_ndim=3)
    c = x.shape[-1]
    if x.ndim != 4 or w.shape[:3] != (c, 3, 3) or w.size != 9 * c:
        raise ValueError(
            f"[{op}] expected x (N, H, W, C) and w ({c}, 3, 3, 1), got {x.shape} and {w.shape}"
        )
    check_vector(op, "b", b, c)
    if not (isinstance(stride, int) and stride >= 1 and isinstance(padding, int) and padding >= 0):
        raise ValueError(f"[{op}] expected stride >= 1 and padding >= 0, got {stride}, {padding}")
    if min(_out_size(x.shape[1], stride, padding), _out_size(x.shape[2], stride, padding)) <= 0:
        raise ValueError(f"[{op}] the image {x.shape[1:3]} is smaller than the 3x3 window")
    args = [x, w] + ([b] if b is not None else [])
    return _depthwise_fn(b is not None, stride, padding)(*args)


# ---------------------------------------------------------------------------------------
# Catalog entries


def _img(case, dtype, rng):
    shape = case["shape"]
    if case.get("nchw"):  # NCHW data viewed as NHWC: a non-contiguous input
        n, h, w, c = shape
        a = mx.array(rng.normal(size=(n, c, h, w)).astype("float32")).transpose(0, 2, 3, 1)
    else:
        a = mx.array(rng.normal(size=shape).astype("float32"))
    return a.astype(dtype)


def _make_resize(case, dtype, rng):
    return _img(case, dtype, rng), *case["out"], case.get("align", False)


def _stock_resize(x, out_h, out_w, align):
    import mlx.nn as nn

    scale = (out_h / x.shape[1], out_w / x.shape[2])
    return nn.Upsample(scale_factor=scale, mode="linear", align_corners=align)(x)


def _make_dw(case, dtype, rng):
    c = case["shape"][-1]
    w = mx.array(rng.normal(size=(c, 3, 3, 1)).astype("float32") / 3).astype(dtype)
    b = mx.array(rng.normal(size=(c,)).astype("float32")).astype(dtype)
    return (
        _img(case, dtype, rng),
        w,
        b if case.get("bias", True) else None,
        case.get("stride", 1),
        case.get("padding", 1),
    )


def _stock_dw(x, w, b, stride, padding):
    y = mx.conv2d(x, w, stride=stride, padding=padding, groups=x.shape[-1])
    return y + b if b is not None else y


register(
    KernelSpec(
        name="resize_bilinear",
        family="image",
        op=resize_bilinear,
        ref=resize_bilinear_ref,
        make_inputs=_make_resize,
        cases=(
            {"id": "1x1-to-2x3", "shape": (1, 1, 1, 1), "out": (2, 3)},
            {"id": "up-non-integer", "shape": (2, 5, 7, 3), "out": (9, 4)},
            {"id": "align-corners", "shape": (1, 4, 6, 33), "out": (7, 11), "align": True},
            {"id": "down", "shape": (1, 33, 31, 4), "out": (16, 15)},
            {"id": "nchw-view", "shape": (2, 6, 5, 8), "out": (12, 10), "nchw": True},
        ),
        bench_cases=(
            {"id": "sd-up-64x64x320", "shape": (1, 64, 64, 320), "out": (128, 128)},
            {"id": "sd-up-32x32x640", "shape": (2, 32, 32, 640), "out": (64, 64)},
        ),
        stock=_stock_resize,
        grad_argnums=(0,),
        description="bilinear resize of NHWC images to any size (half-pixel or align_corners)",
    )
)
register(
    KernelSpec(
        name="depthwise_conv3x3",
        family="image",
        op=depthwise_conv3x3,
        ref=depthwise_conv3x3_ref,
        make_inputs=_make_dw,
        cases=(
            {"id": "1x1x1x1", "shape": (1, 1, 1, 1)},
            {"id": "2x5x7x3", "shape": (2, 5, 7, 3)},
            {"id": "stride2-1x9x8x33", "shape": (1, 9, 8, 33), "stride": 2},
            {
                "id": "pad0-no-bias",
                "shape": (1, 6, 5, 31),
                "padding": 0,
                "bias": False,
                "grad": False,
            },
            {"id": "nchw-view", "shape": (2, 6, 5, 8), "nchw": True},
        ),
        bench_cases=(
            {"id": "mbv2-112x112x32", "shape": (1, 112, 112, 32)},
            {"id": "mbv2-56x56x144-b8", "shape": (8, 56, 56, 144)},
            {"id": "mbv2-s2-112x112x96", "shape": (1, 112, 112, 96), "stride": 2},
        ),
        stock=_stock_dw,
        grad_argnums=(0, 1, 2),
        description="3x3 depthwise conv on NHWC (mx.conv2d groups=C semantics), any stride/padding",
    )
)
