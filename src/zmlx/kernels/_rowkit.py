"""Shared pieces of the hand-written row kernels (softmax, losses, reductions, scans).

A *row* is the last axis. Rows of up to :data:`WARP_ROW_MAX` elements get one warp each (8
rows per group of 256 threads); longer rows get one group each, sized by
:func:`~zmlx.core.kernel.row_group_size`. A body written for :class:`RowKernel` sees ``row``,
``D`` (row length), ``r_lid``/``r_step`` (this thread's first column and stride inside the
row) and two 32-float shared buffers ``zx_buf``/``zx_buf2``; its reductions call the
``zx_row_*`` helpers below with ``(..., zx_buf, r_lid, r_step)``. In warp rows ``r_step`` is
32, so the block helpers end after the warp stage, with no barrier.

Inputs are read through their strides (``ensure_row_contiguous=False``): a transposed,
sliced or broadcast input (a mask broadcast over rows, a cotangent of a sum) costs no copy.
:func:`strided` declares a row's base offset and column stride for one input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import mlx.core as mx

from ..authoring.rows import (  # noqa: F401 (re-exported)
    WARP_GROUP,
    WARP_ROW_MAX,
    row_mode,  # noqa: F401
)
from ..authoring.rows import row_geometry as geometry  # noqa: F401
from ..core.dtypes import check_float
from ..core.kernel import Kernel, dims

MAX_INDEX = 2**24  # indices travel through float shuffles: exact below 2^24

HEADER = r"""
// Online logsumexp state: running max m and sum of exp(v - m) (s == 0 for an empty state).
struct ZxLse { float m; float s; };
ZX_INLINE ZxLse zx_lse(float m, float s) { ZxLse r; r.m = m; r.s = s; return r; }
// A NaN input makes the state NaN in both fields (m and s), so merges keep it whatever the
// other side holds, and the row's results are NaN, as the reference's are.
ZX_INLINE ZxLse zx_lse_push(ZxLse a, float v) {
  if (zx_isnan(v)) { return zx_lse(v, v); }
  if (zx_isnan(a.s) || v == ZX_NEG_INF) { return a; }  // masked: adds nothing
  if (v > a.m) { a.s = a.s * zx_exp(a.m - v) + 1.0f; a.m = v; }
  else { a.s += zx_exp(v - a.m); }
  return a;
}
ZX_INLINE ZxLse zx_lse_merge(ZxLse a, ZxLse b) {
  if (zx_isnan(a.s)) { return a; }
  if (zx_isnan(b.s)) { return b; }
  const float m = a.m > b.m ? a.m : b.m;
  if (m == ZX_NEG_INF) { return a; }
  const float sa = a.m == ZX_NEG_INF ? 0.0f : a.s * zx_exp(a.m - m);
  const float sb = b.m == ZX_NEG_INF ? 0.0f : b.s * zx_exp(b.m - m);
  return zx_lse(m, sa + sb);  // symmetric in (a, b): every lane of a butterfly agrees
}
ZX_INLINE ZxLse zx_warp_lse(ZxLse a) {
  for (int k = 16; k > 0; k >>= 1) {
    a = zx_lse_merge(a, zx_lse(zx_shfl_xor(a.m, k), zx_shfl_xor(a.s, k)));
  }
  return a;
}
// The zx_row_* helpers reduce over the threads of one row: a warp (n == 32) or the group.
// Every thread of the row must call them; all get the result.
ZX_INLINE ZxLse zx_row_lse(ZxLse a, ZX_SHARED_PTR float* bm, ZX_SHARED_PTR float* bs,
                           uint l, uint n) {
  a = zx_warp_lse(a);
  const uint nw = (n + 31u) / 32u;
  if (nw == 1u) { return a; }
  zx_barrier();
  if ((l & 31u) == 0u) { bm[l >> 5] = a.m; bs[l >> 5] = a.s; }
  zx_barrier();
  ZxLse r = (l < nw) ? zx_lse(bm[l], bs[l]) : zx_lse(ZX_NEG_INF, 0.0f);
  if (l < 32u) { r = zx_warp_lse(r); }
  if (l == 0u) { bm[0] = r.m; bs[0] = r.s; }
  zx_barrier();
  return zx_lse(bm[0], bs[0]);
}
ZX_INLINE float zx_row_sum(float v, ZX_SHARED_PTR float* buf, uint l, uint n) {
  return zx_block_sum_impl(v, buf, l, n);
}
ZX_INLINE float zx_row_max(float v, ZX_SHARED_PTR float* buf, uint l, uint n) {
  return zx_block_max_impl(v, buf, l, n);
}
// (value, index) ranking shared by argmax/argmin/top-k: NaN first (as MLX's argmax and
// argmin), then the larger value, then the lower index. Indices travel as exact floats.
ZX_INLINE bool zx_ranks_before(float va, float ia, float vb, float ib) {
  const bool na = zx_isnan(va), nb = zx_isnan(vb);
  if (na || nb) { return na && (!nb || ia < ib); }
  if (va != vb) { return va > vb; }
  return ia < ib;
}
struct ZxArg { float v; float i; };
ZX_INLINE ZxArg zx_arg(float v, float i) { ZxArg r; r.v = v; r.i = i; return r; }
ZX_INLINE ZxArg zx_warp_arg(ZxArg a) {
  for (int k = 16; k > 0; k >>= 1) {
    const ZxArg b = zx_arg(zx_shfl_xor(a.v, k), zx_shfl_xor(a.i, k));
    if (zx_ranks_before(b.v, b.i, a.v, a.i)) { a = b; }
  }
  return a;
}
ZX_INLINE ZxArg zx_row_arg(ZxArg a, ZX_SHARED_PTR float* bv, ZX_SHARED_PTR float* bi,
                           uint l, uint n) {
  a = zx_warp_arg(a);
  const uint nw = (n + 31u) / 32u;
  if (nw == 1u) { return a; }
  zx_barrier();
  if ((l & 31u) == 0u) { bv[l >> 5] = a.v; bi[l >> 5] = a.i; }
  zx_barrier();
  ZxArg r = (l < nw) ? zx_arg(bv[l], bi[l]) : zx_arg(ZX_NEG_INF, 4294967295.0f);
  if (l < 32u) { r = zx_warp_arg(r); }
  if (l == 0u) { bv[0] = r.v; bi[0] = r.i; }
  zx_barrier();
  return zx_arg(bv[0], bi[0]);
}
"""

_PROLOGUE = {
    "warp": """  const uint D = zx_dims[1];
  const uint row = gid * (lsize >> 5) + warp;
  if (row >= zx_dims[0]) { return; }
  const uint r_lid = lane;
  const uint r_step = 32u;
""",
    "block": """  const uint D = zx_dims[1];
  const uint row = gid;
  if (row >= zx_dims[0]) { return; }
  const uint r_lid = lid;
  const uint r_step = lsize;
""",
}
_BUFFERS = "  ZX_SHARED float zx_buf[32];\n  ZX_SHARED float zx_buf2[32];\n"


def strided(name: str, row: str = "row") -> str:
    """Declare ``<name>_b`` (offset of element 0 of ``row``) and ``<name>_s`` (column stride).

    Element ``j`` of the row is then ``name[name_b + j * name_s]``.
    """
    return (
        f"  const long {name}_b = zx_elem_to_loc((long){row} * (long)D, ZX_SHAPE({name}), "
        f"ZX_STRIDES({name}), ZX_NDIM({name}));\n"
        f"  const long {name}_s = ZX_STRIDES({name})[ZX_NDIM({name}) - 1];\n"
    )


def check_input(op: str, x) -> None:
    """Raise unless ``x`` is a float32/float16/bfloat16 mlx array with at least one axis."""
    if not isinstance(x, mx.array):
        raise TypeError(f"[{op}] expected 'x' to be an mlx array, got {type(x).__name__}")
    check_float(op, "x", x)
    if x.ndim == 0:
        raise ValueError(f"[{op}] expected 'x' with at least one axis, got a 0-d array")


def rows_of(x: mx.array) -> int:
    return math.prod(x.shape[:-1])


class RowKernel:
    """A row kernel body, built per geometry (``"warp"`` or ``"block"``) on first use.

    Args:
        name: readable name (kernel names and errors).
        inputs: input names as the body uses them (``zx_dims`` is appended).
        outputs: output names.
        body: the body after the row prologue (see the module docstring).
        header: helpers placed after :data:`HEADER`.
        modes: the geometries this body supports.
    """

    def __init__(
        self,
        name: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        body: str,
        *,
        header: str = "",
        modes: Sequence[str] = ("warp", "block"),
    ) -> None:
        self.name, self.inputs, self.outputs = name, tuple(inputs), tuple(outputs)
        self.body, self.header, self.modes = body, header, tuple(modes)
        self._kernels: dict[str, Kernel] = {}

    def kernel(self, mode: str) -> Kernel:
        k = self._kernels.get(mode)
        if k is None:
            k = Kernel(
                f"{self.name}_{mode}",
                list(self.inputs) + ["zx_dims"],
                list(self.outputs),
                _PROLOGUE[mode] + _BUFFERS + self.body,
                header=HEADER + self.header,
                ensure_row_contiguous=False,
            )
            self._kernels[mode] = k
        return k

    def __call__(
        self,
        *inputs: mx.array,
        rows: int,
        d: int,
        output_shapes: Sequence[Sequence[int]],
        output_dtypes: Sequence[mx.Dtype],
        template: Sequence[tuple] = (),
        mode: str | None = None,
        group: int | None = None,
        backend_name: str | None = None,
    ) -> list[mx.array]:
        mode = mode or row_mode(d)
        if mode not in self.modes:
            mode = self.modes[-1]
        grid, tg = geometry(rows, d, mode, group)
        return self.kernel(mode)(
            *inputs,
            dims(rows, d),
            output_shapes=output_shapes,
            output_dtypes=output_dtypes,
            grid=grid,
            threadgroup=tg,
            template=list(template),
            backend_name=backend_name,
        )


# Catalog cases shared by the row families: row lengths 1, 31, 33 and 4097 (warp rows and
# group rows), a transposed (non-contiguous) input, one decode row and a prefill batch. "k"
# is read by top-k only.
ROW_CASES = (
    {"id": "3x31", "shape": (3, 31)},
    {"id": "2x4097", "shape": (2, 4097)},
    {"id": "1x1", "shape": (1, 1), "k": 1},
    {"id": "5x33", "shape": (5, 33)},
    {"id": "2x3x300", "shape": (2, 3, 300), "k": 32},
    {"id": "transposed", "shape": (300, 6), "transpose": True},
    {"id": "decode", "shape": (1, 4096)},
    {"id": "prefill", "shape": (1024, 4096)},
)
ROW_BENCH = (
    {"id": "decode", "shape": (1, 4096)},
    {"id": "prefill", "shape": (1024, 4096)},
)


def row_input(case, dtype: mx.Dtype, rng, scale: float = 2.0, values=None) -> mx.array:
    """A test input for ``case``: normal values (or ``values``), transposed if it asks."""
    x = rng.normal(size=case["shape"]) * scale if values is None else values
    a = mx.array(x.astype("float32")).astype(dtype)
    return a.T if case.get("transpose") else a
