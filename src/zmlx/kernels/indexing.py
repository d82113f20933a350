"""Row gathers and scatters: ``gather_add`` (embedding lookup plus an addend) and
``scatter_add`` (rows added at indices, duplicates accumulate), each the VJP of the other.

Rows are ``table[r]`` of shape ``F = table.shape[1:]``. Indices may be negative (they wrap, as
in MLX); indices outside ``[-V, V)`` read zeros and write nothing.

``scatter_add`` accumulates with float32 atomic adds (``zx_atomic_add``: CUDA ``atomicAdd``,
Metal ``atomic_fetch_add_explicit``) into a zero-filled float32 buffer that receives the base
and every update, then casts to the output dtype: half and bfloat16 are therefore summed in
float32 and rounded once, and the reference does the same. The order of the atomic adds is not
fixed, so float32 results can differ in the last bits from run to run.
"""

from __future__ import annotations

import math
from functools import cache

import mlx.core as mx

from ..core.backend import backend
from ..core.dtypes import promote
from ..core.kernel import Kernel, grid_1d, scalar
from ._common import VEC, as_list, check_array, dims, vec_grid, vec_loop
from .catalog import KernelSpec, register

_GROUP = 256


def _check(op: str, table_name: str, table, idx, rows_name: str, rows) -> None:
    check_array(op, table_name, table, min_ndim=2)
    if not isinstance(idx, mx.array) or not mx.issubdtype(idx.dtype, mx.integer):
        raise TypeError(f"[{op}] expected 'indices' to be an integer mlx array")
    check_array(op, rows_name, rows, min_ndim=1)
    want = tuple(idx.shape) + tuple(table.shape[1:])
    if tuple(rows.shape) != want:
        raise ValueError(f"[{op}] expected '{rows_name}' of shape {want}, got {tuple(rows.shape)}")


def gather_add_ref(base: mx.array, table: mx.array, indices: mx.array) -> mx.array:
    """``base + table[indices]`` in MLX ops (float32 add, one rounding).

    Shapes:
        base: ``indices.shape + F``; table: ``(V,) + F``; indices: any -> ``base.shape``.
    """
    dtype = promote([base.dtype, table.dtype])
    rows = mx.take(table, indices, axis=0).astype(mx.float32)
    return (base.astype(mx.float32) + rows).astype(dtype)


def scatter_add_ref(base: mx.array, indices: mx.array, updates: mx.array) -> mx.array:
    """``base`` with ``updates[n]`` added to row ``indices[n]`` (float32 sums), in MLX ops.

    Shapes:
        base: ``(V,) + F``; indices: any; updates: ``indices.shape + F`` -> ``base.shape``.
    """
    dtype = promote([base.dtype, updates.dtype])
    acc = base.astype(mx.float32).at[indices].add(updates.astype(mx.float32))
    return acc.astype(dtype)


GATHER = Kernel(
    "gather_add",
    ["base", "table", "idx", "zx_n", "zx_dims"],
    ["out"],
    vec_loop("""
      const uint D = zx_dims[0];
      const long V = (long)zx_dims[1];
      const uint row = i / D;
      long r = static_cast<long>(idx[row]);
      if (r < 0) { r += V; }
      const float t = (r >= 0 && r < V) ? static_cast<float>(table[r * D + (i - row * D)]) : 0.0f;
      out[i] = static_cast<O>(static_cast<float>(base[i]) + t);"""),
)

# Threads [0, NB) add the base (NB = 0 when there is none), the rest add one update element.
SCATTER = Kernel(
    "scatter_add",
    ["base", "idx", "upd", "zx_dims"],
    ["acc"],
    """
  const uint D = zx_dims[0], NB = zx_dims[2], NU = zx_dims[3];
  const long V = (long)zx_dims[1];
  if (tid >= NB + NU) { return; }
  if (tid < NB) {
    zx_atomic_add(&acc[tid], static_cast<float>(base[tid]));
    return;
  }
  const uint e = tid - NB;
  const uint row = e / D;
  long r = static_cast<long>(idx[row]);
  if (r < 0) { r += V; }
  if (r >= 0 && r < V) {
    zx_atomic_add(&acc[r * D + (e - row * D)], static_cast<float>(upd[e]));
  }
""",
    atomic_outputs=True,
)


def _rowsize(table_shape) -> int:
    return math.prod(table_shape[1:])


def scatter_rows(base, indices, updates, v: int, feat: tuple, dtype) -> mx.array:
    """``base`` (or zeros when ``None``) plus updates scattered by row, summed in float32."""
    d = math.prod(feat)
    if backend() == "cpu" or v * d >= 2**31 or updates.size >= 2**31:
        acc = base.astype(mx.float32) if base is not None else mx.zeros((v,) + feat, mx.float32)
        return acc.at[indices].add(updates.astype(mx.float32)).astype(dtype)
    nb = base.size if base is not None else 0
    grid, group = grid_1d(nb + updates.size, _GROUP)
    (acc,) = SCATTER(
        base if base is not None else scalar(0.0),
        indices,
        updates,
        dims(d, v, nb, updates.size),
        output_shapes=[(v,) + feat],
        output_dtypes=[mx.float32],
        grid=grid,
        threadgroup=group,
        init_value=0.0,
    )
    return acc if dtype == mx.float32 else acc.astype(dtype)


@cache
def _gather_fn():
    def forward(base, table, idx):
        dtype = promote([base.dtype, table.dtype])
        if backend() == "cpu" or base.size >= 2**31:
            return gather_add_ref(base, table, idx)
        grid, group = vec_grid(base.size)
        (out,) = GATHER(
            base,
            table,
            idx,
            scalar(base.size, mx.uint32),
            dims(_rowsize(table.shape), table.shape[0]),
            output_shapes=[base.shape],
            output_dtypes=[dtype],
            grid=grid,
            threadgroup=group,
            template=[("O", dtype), ("VEC", VEC)],
        )
        return out

    fn = mx.custom_function(forward)

    @fn.vjp
    def fn_vjp(primals, cotangent, output):
        base, table, idx = as_list(primals)
        g = as_list(cotangent)[0]
        dt = scatter_rows(None, idx, g, table.shape[0], tuple(table.shape[1:]), table.dtype)
        return g.astype(base.dtype), dt, mx.zeros_like(idx)

    return fn


@cache
def _scatter_fn():
    def forward(base, idx, upd):
        dtype = promote([base.dtype, upd.dtype])
        return scatter_rows(base, idx, upd, base.shape[0], tuple(base.shape[1:]), dtype)

    fn = mx.custom_function(forward)

    @fn.vjp
    def fn_vjp(primals, cotangent, output):
        base, idx, upd = as_list(primals)
        g = as_list(cotangent)[0]
        return g.astype(base.dtype), mx.zeros_like(idx), mx.take(g, idx, axis=0).astype(upd.dtype)

    return fn


def gather_add(base: mx.array, table: mx.array, indices: mx.array) -> mx.array:
    """``base + table[indices]``: an embedding lookup fused with an add.

    Args:
        base: the addend (position embeddings, a residual), one row per index.
        table: the rows, ``V`` of them.
        indices: integer row indices (negative ones wrap).

    Returns:
        ``base + table[indices]`` in the promoted dtype (float32 add, one rounding).

    Shapes:
        base: ``indices.shape + F``; table: ``(V,) + F``; indices: any -> ``base.shape``.
    """
    _check("gather_add", "table", table, indices, "base", base)
    if base.size == 0:
        return base.astype(promote([base.dtype, table.dtype]))
    return _gather_fn()(base, table, indices)


def scatter_add(base: mx.array, indices: mx.array, updates: mx.array) -> mx.array:
    """Add row ``updates[n]`` to row ``indices[n]`` of ``base``; duplicate indices accumulate.

    Args:
        base: the rows to add into (``V`` of them).
        indices: integer row indices (negative ones wrap).
        updates: one row per index.

    Returns:
        A new array (MLX kernels do not write in place), summed in float32 and rounded once
        to the promoted dtype.

    Shapes:
        base: ``(V,) + F``; indices: any; updates: ``indices.shape + F`` -> ``base.shape``.
    """
    _check("scatter_add", "base", base, indices, "updates", updates)
    if updates.size == 0:
        return base.astype(promote([base.dtype, updates.dtype]))
    return _scatter_fn()(base, indices, updates)


# ---------------------------------------------------------------------------------------
# Catalog entries


def _arr(rng, shape, dtype, transpose=False):
    x = mx.array(rng.normal(size=shape[::-1] if transpose else shape).astype("float32"))
    x = x.astype(dtype)
    return x.T if transpose else x


def _idx(case, rng):
    v, n = case["v"], case["n"]
    shape = n if isinstance(n, tuple) else (n,)
    lo = -v if case.get("negative") else 0
    return mx.array(rng.integers(lo, v, size=shape).astype("int32"))


def _make_gather(case, dtype, rng):
    idx = _idx(case, rng)
    d = case["d"]
    table = _arr(rng, (case["v"], d), dtype)
    base = _arr(rng, tuple(idx.shape) + (d,), dtype, case.get("transpose", False))
    return base, table, idx


def _make_scatter(case, dtype, rng):
    idx = _idx(case, rng)
    d = case["d"]
    base = _arr(rng, (case["v"], d), dtype)
    upd = _arr(rng, tuple(idx.shape) + (d,), dtype, case.get("transpose", False))
    return base, idx, upd


CASES = (
    {"id": "1", "v": 1, "n": 1, "d": 1},
    {"id": "v31-d33", "v": 31, "n": 5, "d": 33},
    {"id": "d4097", "v": 3, "n": 4, "d": 4097},
    {"id": "duplicates-negative", "v": 4, "n": 40, "d": 8, "negative": True},
    {"id": "transposed", "v": 9, "n": 16, "d": 17, "transpose": True},
    {"id": "decode", "v": 20, "n": (1, 1), "d": 1024},
    {"id": "prefill", "v": 300, "n": (2, 64), "d": 64},
)
BENCH = (
    {"id": "embed-decode", "v": 32000, "n": (1, 1), "d": 4096},
    {"id": "embed-prefill", "v": 32000, "n": (1, 2048), "d": 4096},
)

register(
    KernelSpec(
        name="gather_add",
        family="indexing",
        op=gather_add,
        ref=gather_add_ref,
        make_inputs=_make_gather,
        cases=CASES,
        bench_cases=BENCH,
        stock=lambda base, table, idx: base + table[idx],
        grad_argnums=(0, 1),
        description="base + table[indices] (embedding lookup fused with an add); VJP scatters",
    )
)
register(
    KernelSpec(
        name="scatter_add",
        family="indexing",
        op=scatter_add,
        ref=scatter_add_ref,
        make_inputs=_make_scatter,
        cases=CASES,
        bench_cases=BENCH,
        stock=lambda base, idx, upd: base.at[idx].add(upd),
        grad_argnums=(0, 2),
        description="rows added at indices with float32 atomics (duplicates accumulate); "
        "VJP gathers",
    )
)
