"""GroupNorm on channels-last inputs ``(N, ..., C)`` (NHWC images, ``(N, L, C)`` sequences).

Statistics are taken per sample and per group of channels over every spatial position, in
float32 with a two-pass variance; the output is rounded like ``layer_norm`` (normalized value
cast to the output dtype, times weight, plus bias). ``pytorch_compatible=True`` (the default)
puts channel ``c`` in group ``c // (C / groups)``, as PyTorch and diffusion models do;
``False`` uses ``c % groups``, as ``mlx.nn.GroupNorm``'s default does.

The kernel gives one group of threads to each (sample, group) pair and reads its elements
three times (sum, squared deviations, output; the second and third reads mostly hit L2).
The gradient differentiates the reference.
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx

from ..core import fallback
from ..core.backend import backend
from ..core.dtypes import promote
from ..core.kernel import Kernel, row_group_size
from ._common import as_list, check_array, check_vector, dims, vector
from .catalog import KernelSpec, register


def group_norm_ref(
    x: mx.array,
    groups: int,
    weight: mx.array | None = None,
    bias: mx.array | None = None,
    eps: float | mx.array = 1e-5,
    pytorch_compatible: bool = True,
) -> mx.array:
    """GroupNorm in MLX ops.

    Shapes:
        x: ``(N, ..., C)``; weight, bias: ``(C,)`` -> ``(N, ..., C)``.
    """
    n, c = x.shape[0], x.shape[-1]
    cg = c // groups
    split = (n, -1, groups, cg) if pytorch_compatible else (n, -1, cg, groups)
    axes = (1, 3) if pytorch_compatible else (1, 2)
    xf = x.astype(mx.float32).reshape(split)
    xc = xf - mx.mean(xf, axis=axes, keepdims=True)
    y = xc * mx.rsqrt(mx.mean(mx.square(xc), axis=axes, keepdims=True) + eps)
    dtype = promote(a.dtype for a in (x, weight, bias) if a is not None)
    y = y.reshape(x.shape).astype(dtype)
    if weight is not None:
        y = y * weight.astype(dtype)
    if bias is not None:
        y = y + bias.astype(dtype)
    return y


_BODY = """
  const uint N = zx_dims[0];
  const uint S = zx_dims[1];
  const uint CH = zx_dims[2];
  const uint G = zx_dims[3];
  const uint pair = gid;
  if (pair >= N * G) { return; }  // uniform over the group
  ZX_SHARED float zx_buf[32];
  const uint n = pair / G;
  const uint g = pair - n * G;
  const uint CG = CH / G;
  const long M = (long)S * CG;
  const long base = (long)n * S * CH;
  float s = 0.0f;
  for (long e = lid; e < M; e += lsize) {
    const long sp = e / CG;
    const uint k = (uint)(e - sp * CG);
    const uint ch = CONTIG ? g * CG + k : k * G + g;
    s += static_cast<float>(x[base + sp * CH + ch]);
  }
  const float mean = zx_block_sum(s, zx_buf) / (float)M;
  float q = 0.0f;
  for (long e = lid; e < M; e += lsize) {
    const long sp = e / CG;
    const uint k = (uint)(e - sp * CG);
    const uint ch = CONTIG ? g * CG + k : k * G + g;
    const float d = static_cast<float>(x[base + sp * CH + ch]) - mean;
    q += d * d;
  }
  const float inv = zx_rsqrt(zx_block_sum(q, zx_buf) / (float)M + eps[0]);
  for (long e = lid; e < M; e += lsize) {
    const long sp = e / CG;
    const uint k = (uint)(e - sp * CG);
    const uint ch = CONTIG ? g * CG + k : k * G + g;
    const long i = base + sp * CH + ch;
    float y = static_cast<float>(static_cast<O>((static_cast<float>(x[i]) - mean) * inv));
    AFFINE
    out[i] = static_cast<O>(y);
  }
"""


@cache
def _kernel(has_w: bool, has_b: bool) -> Kernel:
    affine = ""
    if has_w:
        affine += "y = static_cast<float>(static_cast<O>(y * static_cast<float>(w[ch])));"
    if has_b:
        affine += " y += static_cast<float>(b[ch]);"
    inputs = ["x"] + (["w"] if has_w else []) + (["b"] if has_b else []) + ["eps", "zx_dims"]
    name = f"group_norm_{'w' if has_w else ''}{'b' if has_b else ''}"
    return Kernel(name, inputs, ["out"], _BODY.replace("AFFINE", affine))


@cache
def _function(groups: int, has_w: bool, has_b: bool, contig: bool):
    def split(arrays):
        arrays = list(arrays)
        x = arrays.pop(0)
        w = arrays.pop(0) if has_w else None
        b = arrays.pop(0) if has_b else None
        return x, w, b, arrays[0]

    def ref(*arrays):
        x, w, b, eps = split(arrays)
        return group_norm_ref(x, groups, w, b, eps, contig)

    def forward(*arrays):
        x, w, b, eps = split(arrays)
        if backend() == "cpu":
            return ref(*arrays)
        if x.size >= 2**31:
            fallback.note("group_norm", "more than 2^31 elements")
            return ref(*arrays)
        n, c = x.shape[0], x.shape[-1]
        s = x.size // (n * c)
        group = row_group_size(s * (c // groups), per_thread=8)
        dtype = promote(a.dtype for a in (x, w, b) if a is not None)
        ins = [a for a in (x, w, b) if a is not None]
        (out,) = _kernel(has_w, has_b)(
            *ins,
            eps,
            dims(n, s, c, groups),
            output_shapes=[x.shape],
            output_dtypes=[dtype],
            grid=(n * groups * group, 1, 1),
            threadgroup=(group, 1, 1),
            template=[("O", dtype), ("CONTIG", contig)],
        )
        return out

    fn = mx.custom_function(forward)

    @fn.vjp
    def fn_vjp(primals, cotangent, output):
        prims = as_list(primals)
        _, grads = mx.vjp(ref, prims, [as_list(cotangent)[0]])
        return tuple(g.astype(p.dtype) for g, p in zip(grads, prims))

    return fn


def group_norm(
    x: mx.array,
    groups: int,
    weight: mx.array | None = None,
    bias: mx.array | None = None,
    eps: float = 1e-5,
    pytorch_compatible: bool = True,
) -> mx.array:
    """GroupNorm over channels-last input.

    Args:
        x: input with channels last; axis 0 is the batch, the axes between are spatial.
        groups: number of channel groups (must divide ``C``).
        weight: optional per-channel scale ``(C,)``.
        bias: optional per-channel shift ``(C,)``.
        eps: added to the variance (runtime value).
        pytorch_compatible: contiguous channel groups (PyTorch); ``False`` groups channels
            ``c % groups`` like ``mlx.nn.GroupNorm(pytorch_compatible=False)``.

    Returns:
        The normalized array in ``x``'s dtype promoted with weight/bias.

    Shapes:
        x: ``(N, ..., C)``; weight, bias: ``(C,)`` -> ``(N, ..., C)``.
    """
    check_array("group_norm", "x", x, min_ndim=2)
    c = x.shape[-1]
    if not isinstance(groups, int) or groups <= 0 or c % groups:
        raise ValueError(f"[group_norm] expected groups > 0 dividing C={c}, got {groups!r}")
    check_vector("group_norm", "weight", weight, c)
    check_vector("group_norm", "bias", bias, c)
    if x.size == 0:
        return mx.zeros(x.shape, promote(a.dtype for a in (x, weight, bias) if a is not None))
    fn = _function(groups, weight is not None, bias is not None, bool(pytorch_compatible))
    args = [a for a in (x, weight, bias) if a is not None]
    return fn(*args, vector([eps], mx.float32))


def group_norm_stock(x, groups, weight=None, bias=None, eps=1e-5):
    """The stock-MLX way (``mlx.nn.GroupNorm(pytorch_compatible=True)``): regroup with a
    transpose and call ``mx.fast.layer_norm``."""
    n, c = x.shape[0], x.shape[-1]
    y = x.reshape(n, -1, groups, c // groups).transpose(0, 2, 1, 3).reshape(n, groups, -1)
    y = mx.fast.layer_norm(y, None, None, eps)
    y = y.reshape(n, groups, -1, c // groups).transpose(0, 2, 1, 3).reshape(x.shape)
    return weight * y + bias if weight is not None else y


def _make(case, dtype, rng):
    shape, g = case["shape"], case["groups"]
    x = mx.array(rng.normal(size=shape).astype("float32") * 2 + 0.3).astype(dtype)
    if case.get("transpose"):  # NCHW data viewed as NHWC: a non-contiguous input
        x = mx.array(rng.normal(size=(shape[0], shape[3], shape[1], shape[2])).astype("float32"))
        x = x.astype(dtype).transpose(0, 2, 3, 1)
    c = shape[-1]
    w = mx.array((1 + 0.2 * rng.normal(size=(c,))).astype("float32")).astype(dtype)
    b = mx.array((0.2 * rng.normal(size=(c,))).astype("float32")).astype(dtype)
    return x, g, w, b, 1e-5


register(
    KernelSpec(
        name="group_norm",
        family="norms",
        op=group_norm,
        ref=group_norm_ref,
        make_inputs=_make,
        cases=(
            {"id": "1x1x1x4-g2", "shape": (1, 1, 1, 4), "groups": 2},
            {"id": "2x5x7x12-g3", "shape": (2, 5, 7, 12), "groups": 3},
            {"id": "2x31x33-g11", "shape": (2, 31, 33), "groups": 11},
            {"id": "1x9x9x64-g32", "shape": (1, 9, 9, 64), "groups": 32},
            {"id": "nchw-view", "shape": (2, 6, 5, 8), "groups": 4, "transpose": True},
            {"id": "1x4097x8-g2", "shape": (1, 4097, 8), "groups": 2},
        ),
        bench_cases=(
            {"id": "sd-64x64x320-g32", "shape": (1, 64, 64, 320), "groups": 32},
            {"id": "sd-32x32x640-g32", "shape": (2, 32, 32, 640), "groups": 32},
        ),
        stock=group_norm_stock,
        grad_argnums=(0, 2, 3),
        description="GroupNorm on (N, ..., C) with contiguous (PyTorch) or strided channel groups",
    )
)
