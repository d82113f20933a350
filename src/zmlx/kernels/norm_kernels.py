"""Row-normalization kernels (RMSNorm, LayerNorm, their residual-add forms) and their backward.

One body generator covers every variant; Python flags decide which inputs exist, so each
built kernel contains only the code it runs. A row of ``D`` elements gets one warp when
``D <= WARP_MAX`` and one group otherwise; each thread keeps its ``C`` elements of the row in
registers (``C`` is a template constant), so the row is read from memory once.

The backward kernel gives each unit (warp or group) a strided set of rows: it writes ``dx``
for every row and keeps per-column partial sums of ``dw``/``db`` in registers, written once
as a ``(units, D)`` float32 block that the caller sums over its first axis.
"""

from __future__ import annotations

import math
from functools import cache

import mlx.core as mx

from ..core import overrides
from ..core.kernel import Kernel, row_group_size
from ._common import dims

WARP_MAX = 256  # rows up to this length get one warp (8 rows per group of 256 threads)
MAX_C = 32  # elements per thread kept in registers; longer rows take the reference path
_WARP_GROUP = 256
_BWD_UNITS_BLOCK = 512  # groups in the backward pass when rows are many (2-4 per SM on H100)
_BWD_UNITS_WARP = 4096  # warps likewise (512 groups of 8)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@cache
def geometry(d: int) -> tuple[bool, int, int]:
    """``(warp_mode, threads_per_group, C)`` for rows of ``d`` elements.

    ``C`` is 8 for every warp row and a power of two for group rows, so that few builds serve
    every row length (each distinct ``C`` is one more NVRTC compile of about two seconds); the
    extra slots are bounds-checked no-ops.
    """
    if d <= WARP_MAX:
        return True, _WARP_GROUP, WARP_MAX // 32
    g = row_group_size(d)
    return False, g, _pow2(math.ceil(d / g))


def supported(d: int) -> bool:
    return geometry(d)[2] <= MAX_C


@cache
def knob_geometry(d: int, warp: bool, group: int) -> tuple[bool, int, int] | None:
    """``(warp, group, C)`` for rows of ``d`` elements with these knobs (None: C > MAX_C).

    The defaults give :func:`geometry` back: warp rows keep at least 8 elements per lane.
    """
    c = max(WARP_MAX // 32, _pow2(math.ceil(d / 32))) if warp else _pow2(math.ceil(d / group))
    return (warp, group, c) if c <= MAX_C else None


def _knob_check(args, knobs) -> str | None:
    d = args[0].shape[-1]
    if knob_geometry(d, knobs["warp"], knobs["group"]) is None:
        return f"rows of {d} need more than {MAX_C} elements per thread with {dict(knobs)}"
    return None


KNOBS = overrides.register_space(
    overrides.KnobSpace(
        name="norm",
        values={"warp": (False, True), "group": (32, 64, 128, 256, 512, 1024)},
        shape_class=lambda args: f"d{args[0].shape[-1]}",
        defaults=lambda args: dict(zip(("warp", "group"), geometry(args[0].shape[-1])[:2])),
        check=_knob_check,
        describe="warp: one warp per row (group / 32 rows per group) or one group per row; "
        "group: threads per group; each thread keeps C elements of its row in registers "
        "(a template constant derived from the row length)",
        ops=("rms_norm", "layer_norm", "add_rms_norm", "add_layer_norm"),
    )
)
"""Launch knobs of the forward norm kernels (see :mod:`zmlx.core.overrides`)."""


def forward_geometry(op: str, x: mx.array) -> tuple[bool, int, int]:
    """:func:`geometry` of ``x``'s rows, or the knobs an override gives ``op`` there."""
    d = x.shape[-1]
    knobs = overrides.lookup(op, lambda: f"d{d}")
    if knobs is None:
        return geometry(d)
    k = KNOBS.resolve((x,), knobs)
    return knob_geometry(d, k["warp"], k["group"]) or geometry(d)


def _prologue(warp: bool, unit_name: str) -> list[str]:
    if warp:
        return [
            f"const uint {unit_name} = gid * (lsize / 32u) + warp;",
            "const uint t = lane;",
            "const uint step = 32u;",
        ]
    return [f"const uint {unit_name} = gid;", "const uint t = lid;", "const uint step = lsize;"]


def _reduce(warp: bool, v: str) -> str:
    return f"zx_warp_sum({v})" if warp else f"zx_block_sum({v}, zx_buf)"


def _stats(warp: bool, ln: bool) -> list[str]:
    """Lines computing ``mean`` and ``inv`` from ``v[C]`` (and ``s``, their sum or sum of squares)."""
    if not ln:
        return [
            "const float mean = 0.0f;",
            f"const float inv = zx_rsqrt({_reduce(warp, 's')} / (float)D + eps[0]);",
        ]
    return [
        f"const float mean = {_reduce(warp, 's')} / (float)D;",
        "float q = 0.0f;",
        "#pragma unroll",
        "for (int c = 0; c < C; ++c) {",
        "  if (t + (uint)c * step < D) { const float dv = v[c] - mean; q += dv * dv; }",
        "}",
        f"const float inv = zx_rsqrt({_reduce(warp, 'q')} / (float)D + eps[0]);",
    ]


@cache
def forward_kernel(warp: bool, ln: bool, add: bool, has_w: bool, has_b: bool) -> Kernel:
    """Normalize each row (``ln``: LayerNorm, else RMSNorm), optionally after ``h = x + r``.

    Inputs ``x, [r], [w], [b], eps, zx_dims``; outputs ``out, [h]``. Templates: ``O`` (output
    dtype), ``H`` (dtype of ``h``), ``C`` (elements per thread). Roundings follow
    ``mx.fast``: the normalized value is cast to ``O`` before the weight multiply, the product
    is cast again before the bias add.
    """
    lines = _prologue(warp, "row")
    lines += [
        "const uint nrows = zx_dims[0];",
        "const uint D = zx_dims[1];",
        "if (row >= nrows) { return; }",  # uniform over the warp (warp mode) or the group
    ]
    if not warp:
        lines.append("ZX_SHARED float zx_buf[32];")
    load = "float a = static_cast<float>(x[base + j]);"
    if add:
        load += (
            " const H hv = static_cast<H>(a + static_cast<float>(r[base + j]));"
            " h[base + j] = hv; a = static_cast<float>(hv);"
        )
    lines += [
        "const long base = (long)row * D;",
        "float v[C];",
        "float s = 0.0f;",
        "#pragma unroll",
        "for (int c = 0; c < C; ++c) {",
        "  const uint j = t + (uint)c * step;",
        "  v[c] = 0.0f;",
        f"  if (j < D) {{ {load} v[c] = a; s += {'a' if ln else 'a * a'}; }}",
        "}",
    ]
    lines += _stats(warp, ln)
    affine = ""
    if has_w:
        affine += " y = static_cast<float>(static_cast<O>(y * static_cast<float>(w[j])));"
    if has_b:
        affine += " y += static_cast<float>(b[j]);"
    lines += [
        "#pragma unroll",
        "for (int c = 0; c < C; ++c) {",
        "  const uint j = t + (uint)c * step;",
        "  if (j < D) {",
        f"    float y = static_cast<float>(static_cast<O>((v[c] - mean) * inv));{affine}",
        "    out[base + j] = static_cast<O>(y);",
        "  }",
        "}",
    ]
    inputs = ["x"] + (["r"] if add else []) + (["w"] if has_w else []) + (["b"] if has_b else [])
    outputs = ["out"] + (["h"] if add else [])
    name = f"{'layer' if ln else 'rms'}_norm{'_add' if add else ''}_{'w' if has_w else ''}"
    name += f"{'b' if has_b else ''}_{'warp' if warp else 'block'}"
    return Kernel(name, inputs + ["eps", "zx_dims"], outputs, "\n".join("  " + s for s in lines))


@cache
def backward_kernel(warp: bool, ln: bool, has_w: bool, has_b: bool) -> Kernel:
    """``dx`` of each row plus per-unit partial ``dw``/``db`` (float32, ``(units, D)``).

    ``xh = (x - mean) * inv``, ``wg = w * g``:
    ``dx = inv * (wg - mean(wg) [LayerNorm only] - xh * mean(wg * xh))``, ``dw = sum g * xh``,
    ``db = sum g``. Inputs ``x, [w], g, eps, zx_dims`` (``[rows, D, units]``); template ``X``
    is the dtype of ``dx``.
    """
    lines = _prologue(warp, "unit")
    lines += ["const uint nrows = zx_dims[0];", "const uint D = zx_dims[1];"]
    lines += ["const uint U = zx_dims[2];"]
    if not warp:
        lines.append("ZX_SHARED float zx_buf[32];")
    accs = (["aw"] if has_w else []) + (["ab"] if has_b else [])
    for a in accs:
        lines += [
            f"float {a}[C];",
            "#pragma unroll",
            f"for (int c = 0; c < C; ++c) {{ {a}[c] = 0.0f; }}",
        ]
    wj = "static_cast<float>(w[j])" if has_w else "1.0f"
    acc = (" aw[c] += gv[c] * xh;" if has_w else "") + (" ab[c] += gv[c];" if has_b else "")
    m1 = f"{_reduce(warp, 's1')} / (float)D" if ln else "0.0f"
    lines += [
        "for (uint row = unit; row < nrows; row += U) {",  # uniform over the unit
        "  const long base = (long)row * D;",
        "  float v[C];",
        "  float gv[C];",
        "  float s = 0.0f;",
        "  #pragma unroll",
        "  for (int c = 0; c < C; ++c) {",
        "    const uint j = t + (uint)c * step;",
        "    v[c] = 0.0f; gv[c] = 0.0f;",
        "    if (j < D) {",
        "      v[c] = static_cast<float>(x[base + j]); gv[c] = static_cast<float>(g[base + j]);",
        f"      s += {'v[c]' if ln else 'v[c] * v[c]'};",
        "    }",
        "  }",
    ]
    lines += ["  " + s for s in _stats(warp, ln)]
    lines += [
        "  float s1 = 0.0f;",
        "  float s2 = 0.0f;",
        "  #pragma unroll",
        "  for (int c = 0; c < C; ++c) {",
        "    const uint j = t + (uint)c * step;",
        "    if (j < D) {",
        f"      const float xh = (v[c] - mean) * inv; const float wg = gv[c] * {wj};",
        f"      s1 += wg; s2 += wg * xh;{acc}",
        "    }",
        "  }",
        f"  const float m1 = {m1};",
        f"  const float m2 = {_reduce(warp, 's2')} / (float)D;",
        "  #pragma unroll",
        "  for (int c = 0; c < C; ++c) {",
        "    const uint j = t + (uint)c * step;",
        "    if (j < D) {",
        f"      const float xh = (v[c] - mean) * inv; const float wg = gv[c] * {wj};",
        "      dx[base + j] = static_cast<X>(inv * (wg - m1 - xh * m2));",
        "    }",
        "  }",
        "}",
    ]
    for a, out in (("aw", "dw"), ("ab", "db")):
        if a in accs:
            lines += [
                "#pragma unroll",
                "for (int c = 0; c < C; ++c) {",
                "  const uint j = t + (uint)c * step;",
                f"  if (j < D) {{ {out}[(long)unit * D + j] = {a}[c]; }}",
                "}",
            ]
    inputs = ["x"] + (["w"] if has_w else []) + ["g", "eps", "zx_dims"]
    outputs = ["dx"] + (["dw"] if has_w else []) + (["db"] if has_b else [])
    name = f"{'layer' if ln else 'rms'}_norm_vjp_{'w' if has_w else ''}{'b' if has_b else ''}"
    name += f"_{'warp' if warp else 'block'}"
    return Kernel(name, inputs, outputs, "\n".join("  " + s for s in lines))


def run_forward(ln, x, r, w, b, eps, out_dtype, h_dtype) -> list[mx.array]:
    """Launch the forward kernel (``eps``: a 1-element float32 array); returns ``[out]`` or
    ``[out, h]``."""
    d = x.shape[-1]
    rows = x.size // d
    op = ("add_" if r is not None else "") + ("layer_norm" if ln else "rms_norm")
    warp, group, c = forward_geometry(op, x)
    k = forward_kernel(warp, ln, r is not None, w is not None, b is not None)
    ins = [a for a in (x, r, w, b) if a is not None]
    n_groups = math.ceil(rows / (group // 32)) if warp else rows
    shapes = [x.shape] * (2 if r is not None else 1)
    return k(
        *ins,
        eps,
        dims(rows, d),
        output_shapes=shapes,
        output_dtypes=[out_dtype, h_dtype][: len(shapes)],
        grid=(n_groups * group, 1, 1),
        threadgroup=(group, 1, 1),
        template=[("O", out_dtype), ("H", h_dtype), ("C", c)],
    )


def run_backward(ln, x, w, g, eps, has_b: bool):
    """Launch the backward kernel; returns ``(dx, dw or None, db or None)``."""
    d = x.shape[-1]
    rows = x.size // d
    warp, group, c = geometry(d)
    per = group // 32 if warp else 1
    cap = _BWD_UNITS_WARP if warp else _BWD_UNITS_BLOCK
    n_groups = max(1, min(math.ceil(rows / per), cap // per))
    units = n_groups * per
    k = backward_kernel(warp, ln, w is not None, has_b)
    ins = [x] + ([w] if w is not None else []) + [g]
    n_part = (w is not None) + has_b
    outs = k(
        *ins,
        eps,
        dims(rows, d, units),
        output_shapes=[x.shape] + [(units, d)] * n_part,
        output_dtypes=[x.dtype] + [mx.float32] * n_part,
        grid=(n_groups * group, 1, 1),
        threadgroup=(group, 1, 1),
        template=[("X", x.dtype), ("C", c)],
    )
    dx, parts = outs[0], list(outs[1:])
    dw = parts.pop(0).sum(axis=0) if w is not None else None
    db = parts.pop(0).sum(axis=0) if has_b else None
    return dx, dw, db
