"""The gathered gate/up matvec of decode on the tensor cores (CUDA; runs on the CPU emulator).

Why: on an H100 the split-row gate/up kernel (:func:`.quant_kernels.split_matvec_kernel`) is
bound by issuing instructions, most of them the 4-bit decoding and the float multiply-adds
(``ncu_stalls_qwen3_swiglu_h100.txt``). Here a warp's products run as ``mma.m16n8k16`` tiles
(:func:`zx_mma_bf16` in the dialect): 16 weight rows by 16 inputs by 8 columns, of which only
column 0 (the token) is real.

Decoding: the order of the 16 inputs inside one MMA is free, as long as x's fragment uses the
same order. So nibbles ``j`` and ``j + 4`` of a word (16 bits apart) become one bfloat16 pair
with one mask-and-or (``128 + q`` each), and one packed subtract leaves ``q`` exactly: 3
shifts, 4 logic ops and 4 packed subtracts per 8 elements, and no float multiply-adds (the
split kernel: 4 shifts, 8 logic ops, 4 adds and 8 multiply-adds). Products of bfloat16 ``q``
and ``x`` are exact in the float32 accumulators.

Layout: a group of ``W`` warps owns 16 rows of gate and of up for one slot; warp ``w`` takes
inputs ``[w * D / W, (w + 1) * D / W)`` in steps of 64 (``STEPS`` of them). In a step, lane
``(g, t) = (lane / 4, lane % 4)`` loads words ``2t`` and ``2t + 1`` of the step's 8 of rows
``g`` and ``g + 8`` (its inputs ``16t .. 16t + 15`` of the step), and lanes 0-3 load x's same
inputs. MMA ``m`` (0-3) of a step takes pairs (nibble ``m``, nibble ``m + 4``) of each word;
after the 4, lanes with ``t = 0`` hold the step's sums of rows ``g`` (``d[0]``) and ``g + 8``
(``d[2]``), and add ``scale * sum + bias * sum(x)``. The warps' partial sums meet in shared
memory; lane ``l`` of the first warp adds those of row ``l % 16`` of gate (``l < 16``) or up,
and lane ``r < 16`` finishes row ``r``.
x's fragments live in shared memory (``D / 2`` words a group), not in every lane's registers.

Covers affine 4-bit weights with groups of a multiple of 64, bfloat16 activations (x enters
the tensor cores as it is), rows of a multiple of ``64 * W`` inputs, the gated kinds without
bias (:data:`.quant_kernels.GATED` but GPT-OSS's); :func:`covers` says which calls.
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx

from ..core.kernel import Kernel
from .quant_kernels import GATED, HEADER, _matvec_signature, _store

ROWS = 16  # rows of each weight a group owns (the MMA's M)

_HEADER = (
    HEADER
    + r"""
// Nibbles j and j + 4 of w as two bfloat16 (the lower in the low half), exactly.
ZX_INLINE uint zx_q4_pair(uint w, int j) {
  return zx_bf16x2_sub(((w >> (4 * j)) & 0x000F000Fu) | 0x43004300u, 0x43004300u);
}
// The bfloat16 bits of a float that is one (its low 16 bits zero).
ZX_INLINE uint zx_bf16_bits(float v) {
  return zx_as_uint(v) >> 16;
}
"""
)


def covers(kind: str, mode: str, bits: int, group_size: int, dtype, d: int, warps: int,
           has_bias: bool, prenorm: bool) -> bool:  # fmt: skip
    """Whether :func:`gate_up_kernel` takes this call."""
    return (
        kind in GATED
        and kind != "swiglu_oai"
        and mode == "affine"
        and bits == 4
        and group_size % 64 == 0
        and dtype == mx.bfloat16
        and warps > 0
        and d % (64 * warps) == 0
        and not has_bias
        and not prenorm
    )


@cache
def gate_up_kernel(kind: str, x_per_slot: bool) -> Kernel:
    """The gathered gate/up matvec with activation ``kind`` on the tensor cores (see the module
    docstring). Inputs and outputs as :func:`.quant_kernels.split_matvec_kernel`'s (no bias).

    Template constants: ``T`` (bfloat16), ``D``, ``N``, ``BITS`` (4), ``GROUP_SIZE``, ``K``,
    ``R`` (16), ``NB`` (groups per slot), ``W`` (warps per group), ``STEPS`` (``D / (64 W)``).
    Runtime: ``rt[0]`` = slots."""
    if kind not in GATED or kind == "swiglu_oai":
        raise ValueError(f"[mma_kernels] no tensor-core gate/up for {kind!r}")
    inputs, outputs = _matvec_signature(kind, "affine", True, False, False)
    xrow = "slot" if x_per_slot else "slot / K"
    mats = (("wg", "sg", "bg"), ("wu", "su", "bu"))
    loads = ""
    for m, (w, s, b) in enumerate(mats):
        loads += f"""
    w{m}a[st][0] = {w}[wrow_a + wbase];
    w{m}a[st][1] = {w}[wrow_a + wbase + 1];
    w{m}b[st][0] = {w}[wrow_b + wbase];
    w{m}b[st][1] = {w}[wrow_b + wbase + 1];
    if (q == 0) {{
      s{m}a[st] = static_cast<float>({s}[grow_a + grp]);
      b{m}a[st] = static_cast<float>({b}[grow_a + grp]);
      s{m}b[st] = static_cast<float>({s}[grow_b + grp]);
      b{m}b[st] = static_cast<float>({b}[grow_b + grp]);
    }}"""
    decl = "".join(
        f"  uint w{m}a[STEPS][2];\n  uint w{m}b[STEPS][2];\n"
        f"  float s{m}a[STEPS], b{m}a[STEPS], s{m}b[STEPS], b{m}b[STEPS];\n"
        f"  float acc{m}a = 0.0f;\n  float acc{m}b = 0.0f;\n"
        for m in range(2)
    )
    math = ""
    for m in range(2):
        math += f"""
    {{
      float c[4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
      for (int j = 0; j < 4; ++j) {{
        uint a[4];
        a[0] = zx_q4_pair(w{m}a[st][0], j);
        a[1] = zx_q4_pair(w{m}b[st][0], j);
        a[2] = zx_q4_pair(w{m}a[st][1], j);
        a[3] = zx_q4_pair(w{m}b[st][1], j);
        float dd[4];
        uint bq[2];
        bq[0] = g == 0 ? xq[(((int)warp * STEPS + st) * 4 + j) * 8 + 2 * q] : 0u;
        bq[1] = g == 0 ? xq[(((int)warp * STEPS + st) * 4 + j) * 8 + 2 * q + 1] : 0u;
        zx_mma_bf16(dd, a, bq, c);
        c[0] = dd[0]; c[1] = dd[1]; c[2] = dd[2]; c[3] = dd[3];
      }}
      if (q == 0) {{
        acc{m}a += s{m}a[st] * c[0] + b{m}a[st] * xs[st];
        acc{m}b += s{m}b[st] * c[2] + b{m}b[st] * xs[st];
      }}
    }}"""
    body = f"""
  ZX_SHARED float red[W * R * 2];
  const int slot = (int)gid / NB;
  if (slot >= rt[0]) {{
    return;
  }}
  const int row0 = ((int)gid % NB) * R;
  const int ex = static_cast<int>(idx[slot]);
  const T* xp = x + (size_t)({xrow}) * D;
  const int g = (int)lane >> 2;
  const int q = (int)lane & 3;
  constexpr int NW = D / 8;
  constexpr int NG = D / GROUP_SIZE;
  const size_t wrow_a = (size_t)(ex * N + zx_imin(row0 + g, N - 1)) * NW;
  const size_t wrow_b = (size_t)(ex * N + zx_imin(row0 + g + 8, N - 1)) * NW;
  const size_t grow_a = (size_t)(ex * N + zx_imin(row0 + g, N - 1)) * NG;
  const size_t grow_b = (size_t)(ex * N + zx_imin(row0 + g + 8, N - 1)) * NG;
  const int in0 = (int)warp * STEPS * 64;
{decl}  ZX_SHARED uint xq[W * STEPS * 4 * 8];
  float xs[STEPS];
#pragma unroll
  for (int st = 0; st < STEPS; ++st) {{
    const int wbase = (in0 + 64 * st) / 8 + 2 * q;
    const int grp = (in0 + 64 * st) / GROUP_SIZE;{loads}
  }}
#pragma unroll
  for (int st = 0; st < STEPS; ++st) {{
    // x's fragment: lanes 0-3 (column 0) hold inputs 16t .. 16t + 15 of the step, paired as
    // the weights' nibbles are (j with j + 4), kept in shared memory (xq) rather than in
    // every lane's registers; the other columns are zero.
    float xv[16];
    float part = 0.0f;
#pragma unroll
    for (int e = 0; e < 16; ++e) {{
      xv[e] = g == 0 ? static_cast<float>(xp[in0 + 64 * st + 16 * q + e]) : 0.0f;
      part += xv[e];
    }}
    if (g == 0) {{
#pragma unroll
      for (int j = 0; j < 4; ++j) {{
        const int at = (((int)warp * STEPS + st) * 4 + j) * 8 + 2 * q;
        xq[at] = zx_bf16_bits(xv[j]) | (zx_bf16_bits(xv[j + 4]) << 16);
        xq[at + 1] = zx_bf16_bits(xv[8 + j]) | (zx_bf16_bits(xv[12 + j]) << 16);
      }}
    }}
    xs[st] = zx_shfl(part, 0) + zx_shfl(part, 1) + zx_shfl(part, 2) + zx_shfl(part, 3);
  }}
  zx_barrier();
#pragma unroll
  for (int st = 0; st < STEPS; ++st) {{{math}
  }}
  if (q == 0) {{
    red[((int)warp * R + g) * 2 + 0] = acc0a;
    red[((int)warp * R + g) * 2 + 1] = acc1a;
    red[((int)warp * R + g + 8) * 2 + 0] = acc0b;
    red[((int)warp * R + g + 8) * 2 + 1] = acc1b;
  }}
  zx_barrier();
  if (warp == 0u) {{
    // Lane l adds the W partial sums of row l % 16 of weight l / 16 (gate, up) in warp order;
    // lane r < 16 then has row r's gate sum and takes its up sum from lane r + 16.
    float f = 0.0f;
    for (int w = 0; w < W; ++w) {{
      f += red[(w * R + ((int)lane & 15)) * 2 + ((int)lane >> 4)];
    }}
    const float fin0 = f;
    const float fin1 = zx_shfl(f, ((int)lane & 15) + 16);
{_store(kind, ["g", "u"], True, False, False, lanes=True, fin=False)}  }}
"""
    return Kernel(f"qmv_{kind}_affine_gather_mma", inputs, outputs, body, header=_HEADER)
