"""Small helpers shared by the catalog family modules (not part of the public API)."""

from __future__ import annotations

import mlx.core as mx

from ..core.dtypes import check_float
from ..core.kernel import dims, grid_1d, vector  # noqa: F401 (re-exported)

VEC = 4  # elements per thread in elementwise-shaped kernels (memory-level parallelism)


def vec_loop(inner: str) -> str:
    """A kernel body running ``inner`` for element ``i`` of ``zx_n[0]``, ``VEC`` elements per
    thread, ``lsize`` apart so each warp access is coalesced. Launch with :func:`vec_grid` and
    the template ``("VEC", VEC)``."""
    return (
        "  const uint n = zx_n[0];\n"
        "  const uint first = gid * (lsize * VEC) + lid;\n"
        "  #pragma unroll\n"
        "  for (int e = 0; e < VEC; ++e) {\n"
        "    const uint i = first + e * lsize;\n"
        "    if (i < n) {\n" + inner.rstrip() + "\n    }\n  }\n"
    )


def vec_grid(n: int, group: int = 256) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(grid, threadgroup)`` for :func:`vec_loop` over ``n`` elements."""
    return grid_1d(-(-n // VEC), group)


def as_list(x) -> list:
    """A lone array (as MLX passes a single primal or cotangent) or a tuple, as a list."""
    return [x] if isinstance(x, mx.array) else list(x)


def check_vector(op: str, name: str, a: mx.array | None, n: int) -> None:
    """Raise unless ``a`` is None or a float vector of ``n`` elements."""
    if a is None:
        return
    if not isinstance(a, mx.array):
        raise TypeError(f"[{op}] expected '{name}' to be an mlx array, got {type(a).__name__}")
    check_float(op, name, a)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"[{op}] expected '{name}' of shape ({n},), got {tuple(a.shape)}")


def check_array(op: str, name: str, a, min_ndim: int = 1) -> None:
    """Raise unless ``a`` is a float mlx array with at least ``min_ndim`` axes."""
    if not isinstance(a, mx.array):
        raise TypeError(f"[{op}] expected '{name}' to be an mlx array, got {type(a).__name__}")
    check_float(op, name, a)
    if a.ndim < min_ndim:
        raise ValueError(
            f"[{op}] expected '{name}' with at least {min_ndim} axes, got shape {tuple(a.shape)}"
        )


# ---------------------------------------------------------------------------------------
# A decoder layer's pre-norm folded into the op that consumes it (``prenorm=``)


def check_prenorm(op: str, x: mx.array, prenorm) -> tuple[mx.array, mx.array, float] | None:
    """Check ``prenorm = (residual, weight, eps)``: the op reads ``rms_norm(x + residual,
    weight, eps)`` instead of ``x`` (``x`` being a decoder layer's residual stream)."""
    if prenorm is None:
        return None
    try:
        a, w, eps = prenorm
    except (TypeError, ValueError):
        raise TypeError(
            f"[{op}] expected prenorm = (residual, weight, eps), got {prenorm!r}"
        ) from None
    if not isinstance(a, mx.array) or a.shape != x.shape or a.dtype != x.dtype:
        got = (tuple(a.shape), a.dtype) if isinstance(a, mx.array) else type(a).__name__
        raise ValueError(
            f"[{op}] expected a prenorm residual like x {(tuple(x.shape), x.dtype)}, got {got}"
        )
    if not isinstance(w, mx.array) or w.shape != (x.shape[-1],):
        got = tuple(w.shape) if isinstance(w, mx.array) else type(w).__name__
        raise ValueError(f"[{op}] expected a prenorm weight of shape ({x.shape[-1]},), got {got}")
    return a, w, float(eps)


def prenorm_ref(x: mx.array, prenorm) -> mx.array:
    """What a folded pre-norm computes, in MLX ops (mlx-lm's ``norm(x + residual)``)."""
    if prenorm is None:
        return x
    a, w, eps = prenorm
    return mx.fast.rms_norm(x + a, w, eps)


def prenorm_foldable(x: mx.array, prenorm) -> bool:
    """Whether a kernel can fold ``prenorm`` (its weight in x's dtype, so the product rounds
    as MLX's rms_norm rounds it)."""
    return prenorm is not None and prenorm[1].dtype == x.dtype


def flag_handoff(flag: str, count: str, me: str, *, block: bool) -> str:
    """Kernel text of the dialect's grid-wide hand-off (CUDA; ``zx_flag_*`` in
    :mod:`zmlx.core.dialect`): the group publishes its writes and raises its flag, then reads
    every flag, and only a group that sees them all raised goes on, after lowering them.

    ``flag``: the expression of flag ``i`` with ``{i}`` in it (e.g. ``"flg[tok * n + {i}]"``);
    ``count``: how many flags; ``me``: this group's flag index. ``block``: every thread of the
    finishing group goes on (warp 0 reads the flags and tells the others through shared memory);
    otherwise only its warp 0 does.
    """

    def at(i: str) -> str:
        return "&" + flag.format(i=i)

    n = f"(uint)({count})"
    text = (
        "  zx_barrier();\n"
        "  if (lid == 0u) {\n"
        "    zx_fence();\n"
        f"    zx_flag_raise({at(me)});\n"
        "  }\n"
        "  zx_barrier();\n"
    )
    check = (
        "  zx_fence();\n"
        "  float hf_up = 1.0f;\n"
        f"  for (uint hf = lane; hf < {n}; hf += 32u) {{\n"
        f"    hf_up = zx_min(hf_up, zx_flag_up({at('hf')}) ? 1.0f : 0.0f);\n"
        "  }\n"
    )
    if not block:
        return (
            text + "  if (warp != 0u) { return; }\n" + check
            + "  if (zx_warp_min(hf_up) < 0.5f) { return; }\n"
            + "  zx_fence();\n"
            + f"  for (uint hf = lane; hf < {n}; hf += 32u) {{ zx_flag_lower({at('hf')}); }}\n"
        )  # fmt: skip
    return (
        "  ZX_SHARED uint hf_all;\n" + text + "  if (warp == 0u) {\n" + check
        + "    hf_up = zx_warp_min(hf_up);\n"
        + "    if (lane == 0u) { hf_all = hf_up > 0.5f ? 1u : 0u; }\n"
        + "  }\n  zx_barrier();\n"
        + "  if (hf_all == 0u) { return; }\n"
        + "  zx_fence();\n"
        + f"  for (uint hf = lid; hf < {n}; hf += lsize) {{ zx_flag_lower({at('hf')}); }}\n"
    )  # fmt: skip
