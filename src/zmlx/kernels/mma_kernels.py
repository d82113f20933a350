"""The gathered gate/up matvec of decode on the tensor cores (CUDA; runs on the CPU emulator).

Why: on an H100 the split-row gate/up kernel (:func:`.quant_kernels.split_matvec_kernel`) runs
a long chain of instructions per warp, most of them the 4-bit decoding and the float
multiply-adds (``ncu_stalls_qwen3_swiglu_h100.txt``): about 700 for 4 rows x 256 inputs of two
weights. Here a warp's products run as ``mma.m16n8k16`` tiles (:func:`zx_mma_bf16` in the
dialect): 16 weight rows by 16 inputs by 8 columns, so a warp covers 16 rows of both weights.

Decoding: the order of the 16 inputs inside one MMA is free, as long as x's fragment uses the
same order. So nibbles ``j`` and ``j + 4`` of a word (16 bits apart) become one bfloat16 pair
with one mask-and-or (``128 + q`` each), and one packed subtract leaves ``q`` exactly: 3
shifts, 4 logic ops and 4 packed subtracts per 8 elements, and no float multiply-adds.
Products of bfloat16 ``q`` and ``x`` are exact in the float32 accumulators.

Columns: a quantization group's scale applies to the sum over its inputs, so each step of 64
inputs (within one group) needs its own sum. Step ``c`` of a round of up to 8 puts x in column
``c`` of the MMA's B tile (zeros elsewhere), and all steps of the round add into one
accumulator tile: column ``c`` ends holding step ``c``'s sums of each row. Lane ``(g, t) =
(lane / 4, lane % 4)`` supplies B's column ``g`` (x of step ``g``, loaded once a round as 16
inputs: no shared memory) and ends holding columns ``2t`` and ``2t + 1`` of rows ``g`` and
``g + 8``, so it applies the scales and biases of those two steps (``scale * sum + bias *
sum(x)``), and the lanes of a row add theirs (two shuffles).

Layout: a group of ``W`` warps owns 16 rows of gate and of up for one slot; warp ``w`` takes
inputs ``[w * D / W, (w + 1) * D / W)``, ``STEPS`` steps of 64 in rounds of ``COLS = min(STEPS,
8)``. In a step lane ``(g, t)`` loads words ``2t`` and ``2t + 1`` of the step's 8 of rows ``g``
and ``g + 8`` (one 8-byte load: rows are a whole number of 8-word steps, and MLX's buffers
are aligned), the loads of a whole round issued before its math. The
warps' partial sums meet in shared memory; lane ``l`` of the first warp adds those of row
``l % 16`` of gate (``l < 16``) or up, and lane ``r < 16`` finishes row ``r``.

Covers affine 4-bit weights with groups of a multiple of 64, bfloat16 activations (x enters
the tensor cores as it is), rows of a multiple of ``64 * W`` inputs whose steps fill whole
rounds, the gated kinds without bias (:data:`.quant_kernels.GATED` but GPT-OSS's);
:func:`covers` says which calls.
"""

from __future__ import annotations

import mlx.core as mx

from ..core.kernel import Kernel
from . import moe_kernels as mk
from . import quant_kernels as _qk
from .quant_kernels import GATED, HEADER, _matvec_signature, _store, rows_group_head, text_cache

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


def group_warps(d: int) -> int:
    """Warps a group of the tensor-core matvecs has for rows of ``d`` inputs: up to
    :data:`.quant_kernels.MMA_WARPS`, each at least one step of 64 inputs."""
    return max(1, min(_qk.MMA_WARPS, d // 64))


def _format_ok(mode: str, bits: int, group_size: int, dtype) -> bool:
    """Weights and activations the tensor-core kernels take: affine 4-bit in groups of a
    multiple of 64 (a step of 64 inputs lies in one group), bfloat16 activations."""
    return mode == "affine" and bits == 4 and group_size % 64 == 0 and dtype == mx.bfloat16


def covers(kind: str, mode: str, bits: int, group_size: int, dtype, d: int, warps: int,
           has_bias: bool, prenorm: bool) -> bool:  # fmt: skip
    """Whether :func:`gate_up_kernel` takes this call."""
    return (
        kind in GATED
        and kind != "swiglu_oai"
        and _format_ok(mode, bits, group_size, dtype)
        and warps > 0
        and d % (64 * warps) == 0
        and not has_bias
        and not prenorm
    )


def _mma_sums(mats: list[tuple[str, str, str]], length: str, rows: str, ebase: str) -> str:
    """Lane sums ``acc[m][0]``, ``acc[m][1]`` (rows ``row0 + g`` and ``row0 + g + 8`` of weight
    ``m`` of ``mats``, over the warp's slice of inputs, added over the row's four lanes) on
    the tensor cores (see the module docstring). The caller defines ``row0``, ``xp`` (its x
    row), ``in0`` (the slice's first input) and the constants ``STEPS`` (steps of 64 in the
    slice) and ``GROUP_SIZE``; rows hold ``length`` inputs, ``rows`` per expert, the expert's
    first row at ``ebase``; rows past ``rows`` read the last one."""
    nm = len(mats)
    loads, scales, pairs, math = "", "", "", ""
    for m, (w, sc, b) in enumerate(mats):
        for h, row in enumerate(("zx_ra", "zx_rb")):
            loads += f"""
        {{
          const zx_u2 v = zx_ld2({w} + {row} * NW + wbase);
          wv[c][{m}][{2 * h}] = v.x;
          wv[c][{m}][{2 * h + 1}] = v.y;
        }}"""
            scales += f"""
        sv[hh][{m}][{h}] = static_cast<float>({sc}[{row} * NG + grp]);
        bv[hh][{m}][{h}] = static_cast<float>({b}[{row} * NG + grp]);"""
            pairs += f"""
      {{
        const uint sp = *reinterpret_cast<const uint*>({sc} + {row} * NG + grp);
        const uint bp = *reinterpret_cast<const uint*>({b} + {row} * NG + grp);
        sv[0][{m}][{h}] = zx_as_float(sp << 16);
        sv[1][{m}][{h}] = zx_as_float(sp & 0xFFFF0000u);
        bv[0][{m}][{h}] = zx_as_float(bp << 16);
        bv[1][{m}][{h}] = zx_as_float(bp & 0xFFFF0000u);
      }}"""
        math += f"""
          {{
            uint a[4];
            a[0] = zx_q4_pair(wv[c][{m}][0], j);
            a[1] = zx_q4_pair(wv[c][{m}][2], j);
            a[2] = zx_q4_pair(wv[c][{m}][1], j);
            a[3] = zx_q4_pair(wv[c][{m}][3], j);
            zx_mma_bf16(cc[{m}], a, bq, cc[{m}]);
          }}"""
    zeros = ", ".join(["{0.0f, 0.0f}"] * nm)
    czeros = ", ".join(["{0.0f, 0.0f, 0.0f, 0.0f}"] * nm)
    return f"""
  const int g = (int)lane >> 2;
  const int q = (int)lane & 3;
  constexpr int NW = {length} / 8;
  constexpr int NG = {length} / GROUP_SIZE;
  constexpr int COLS = STEPS < 8 ? STEPS : 8;
  constexpr int ROUNDS = (STEPS + COLS - 1) / COLS;
  // Two bfloat16 scales (biases) in one load: columns 2t and 2t + 1 are adjacent groups of
  // 64, the first even, in rows of an even number of groups.
  constexpr bool PAIRS = GROUP_SIZE == 64 && STEPS % 2 == 0 && COLS % 2 == 0 && NG % 2 == 0;
  const size_t zx_ra = (size_t)({ebase}) + zx_imin(row0 + g, {rows} - 1);
  const size_t zx_rb = (size_t)({ebase}) + zx_imin(row0 + g + 8, {rows} - 1);
  float acc[{nm}][2] = {{{zeros}}};  // [weight][row g, row g + 8]
#pragma unroll
  for (int rd = 0; rd < ROUNDS; ++rd) {{
    // Columns (steps) of this round: COLS, or fewer in a last round.
    const int nc = STEPS - rd * COLS < COLS ? STEPS - rd * COLS : COLS;
    uint wv[COLS][{nm}][4];  // [step][weight][row g word 2t, 2t + 1, row g + 8 word 2t, 2t + 1]
#pragma unroll
    for (int c = 0; c < COLS; ++c) {{
      if (c < nc) {{
        const int wbase = (in0 + 64 * (rd * COLS + c)) / 8 + 2 * q;{loads}
      }}
    }}
    // Scales and biases of this lane's columns 2t and 2t + 1 (a column past nc: unused).
    float sv[2][{nm}][2];
    float bv[2][{nm}][2];
    if (PAIRS) {{
      const int grp = (in0 + 64 * (rd * COLS + zx_imin(2 * q, nc - 2))) / GROUP_SIZE;{pairs}
    }} else {{
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {{
        const int grp = (in0 + 64 * (rd * COLS + zx_imin(2 * q + hh, nc - 1))) / GROUP_SIZE;{scales}
      }}
    }}
    // x of step g of the round (B's column g): inputs 16t .. 16t + 15 of the step, paired
    // as the weights' nibbles are (j with j + 4); zeros for a column past nc.
    uint xb[4][2];
    float xsum = 0.0f;
    {{
      float xv[16];
      const int at = in0 + 64 * (rd * COLS + zx_imin(g, nc - 1)) + 16 * q;
#pragma unroll
      for (int e = 0; e < 16; ++e) {{
        xv[e] = g < nc ? static_cast<float>(xp[at + e]) : 0.0f;
        xsum += xv[e];
      }}
#pragma unroll
      for (int j = 0; j < 4; ++j) {{
        xb[j][0] = zx_bf16_bits(xv[j]) | (zx_bf16_bits(xv[j + 4]) << 16);
        xb[j][1] = zx_bf16_bits(xv[8 + j]) | (zx_bf16_bits(xv[12 + j]) << 16);
      }}
    }}
    xsum += zx_shfl_xor(xsum, 1);
    xsum += zx_shfl_xor(xsum, 2);
    // sum(x) of this lane's columns 2t and 2t + 1: held by lanes 8t and 8t + 4.
    const float xs0 = zx_shfl(xsum, 8 * q);
    const float xs1 = zx_shfl(xsum, 8 * q + 4);
    float cc[{nm}][4] = {{{czeros}}};
#pragma unroll
    for (int c = 0; c < COLS; ++c) {{
      if (c < nc) {{
#pragma unroll
        for (int j = 0; j < 4; ++j) {{
          uint bq[2];
          bq[0] = g == c ? xb[j][0] : 0u;
          bq[1] = g == c ? xb[j][1] : 0u;{math}
        }}
      }}
    }}
#pragma unroll
    for (int m = 0; m < {nm}; ++m) {{
      if (2 * q < nc) {{
        acc[m][0] += sv[0][m][0] * cc[m][0] + bv[0][m][0] * xs0;
        acc[m][1] += sv[0][m][1] * cc[m][2] + bv[0][m][1] * xs0;
      }}
      if (2 * q + 1 < nc) {{
        acc[m][0] += sv[1][m][0] * cc[m][1] + bv[1][m][0] * xs1;
        acc[m][1] += sv[1][m][1] * cc[m][3] + bv[1][m][1] * xs1;
      }}
    }}
  }}
#pragma unroll
  for (int m = 0; m < {nm}; ++m) {{
#pragma unroll
    for (int h = 0; h < 2; ++h) {{
      acc[m][h] += zx_shfl_xor(acc[m][h], 1);
      acc[m][h] += zx_shfl_xor(acc[m][h], 2);
    }}
  }}
"""


@text_cache
def gate_up_kernel(kind: str, x_per_slot: bool) -> Kernel:
    """The gathered gate/up matvec with activation ``kind`` on the tensor cores (see the module
    docstring). Inputs and outputs as :func:`.quant_kernels.split_matvec_kernel`'s (no bias).

    Template constants: ``T`` (bfloat16), ``D``, ``N``, ``BITS`` (4), ``GROUP_SIZE``, ``K``,
    ``R`` (16), ``NB`` (groups per slot), ``W`` (warps per group), ``STEPS`` (``D / (64 W)``).
    Runtime: ``rt[0]`` = slots."""
    if kind not in GATED or kind == "swiglu_oai":
        raise ValueError(f"[mma_kernels] no tensor-core gate/up for {kind!r}")
    inputs, outputs, body = _matvec_text(kind, True, x_per_slot, False, False)
    return Kernel(f"qmv_{kind}_affine_gather_mma", inputs, outputs, body, header=_HEADER)


def _matvec_text(kind: str, gather: bool, x_per_slot: bool, has_bias: bool,
                 has_res: bool) -> tuple[list[str], list[str], str]:  # fmt: skip
    """Inputs, outputs and body of a matvec (``"plain"``, or a gated kind's gate and up with
    its activation) with each warp's products on the tensor cores (:func:`_mma_sums`): a group
    of ``W`` warps owns 16 rows of each weight for one slot (``gather``: of its expert) or row
    of x, warp ``w`` a slice of the inputs; the warps' partial sums meet in shared memory and
    lane ``r < 16`` of the first warp finishes row ``r`` (as the split kernel stores it)."""
    parts = ["0"] if kind == "plain" else ["g", "u"]
    nm = len(parts)
    inputs, outputs = _matvec_signature(kind, "affine", gather, has_bias, has_res)
    ebase = "(size_t)ex * N" if gather else "0"
    sums = _mma_sums([(f"w{p}", f"s{p}", f"b{p}") for p in parts], "D", "N", ebase)
    xrow = "slot" if (x_per_slot or not gather) else "slot / K"
    expert = "  const int ex = static_cast<int>(idx[slot]);\n" if gather else ""
    keep = "".join(
        f"    red[((int)warp * R + g) * {nm} + {m}] = acc[{m}][0];\n"
        f"    red[((int)warp * R + g + 8) * {nm} + {m}] = acc[{m}][1];\n"
        for m in range(nm)
    )
    # Lane l adds the W partial sums of row l % 16 (of weight l / 16 for two weights) in warp
    # order; lane r < 16 then holds row r's sums (the up sum taken from lane r + 16).
    fin = "    const float fin0 = f;\n"
    if nm == 2:
        fin += "    const float fin1 = zx_shfl(f, ((int)lane & 15) + 16);\n"
    body = (
        rows_group_head(nm)
        + f"""{expert}  const T* xp = x + (size_t)({xrow}) * D;
  const int in0 = (int)warp * STEPS * 64;
{sums}
  if (q == 0) {{
{keep}  }}
  zx_barrier();
  if (warp == 0u) {{
    float f = 0.0f;
    for (int w = 0; w < W; ++w) {{
      f += red[(w * R + ((int)lane & 15)) * {nm} + ({nm} == 2 ? ((int)lane >> 4) : 0)];
    }}
{fin}{_store(kind, parts, gather, has_bias, has_res, lanes=True, fin=False)}  }}
"""
    )
    return inputs, outputs, body


# The down projection + combine on the tensor cores (combine_kernel) where it covers the call.
# Off: no faster than the split-expert combine. One block's experts on an H100 (device time of
# 8 chained blocks, median of 3 rounds, tensor-core gate/up in both; at 2b95533,
# moe_block_device_mma_combine_h100.json): Qwen3-30B-A3B 16.1 / 16.4 / 16.2 us at 2 / 3 / 4
# warps an expert against 16.2 (1 warp: 18.4), LFM2-8B-A1B 37.6 / 35.0 / 34.8 against 34.7,
# GLM-4.7-Flash 30.7 / 31.3 / 30.2 against 31.1.
MMA_COMBINE = False
# Warps each expert's inputs are split across (S; a group has K * S warps).
MMA_COMBINE_SPLIT = 4


def covers_combine(mode: str, bits: int, group_size: int, dtype, i_dim: int, k: int,
                   split: int) -> bool:  # fmt: skip
    """Whether :func:`combine_kernel` takes this call."""
    return (
        _format_ok(mode, bits, group_size, dtype)
        and split > 0
        and i_dim % (64 * split) == 0
        and 0 < k * split <= 32
    )


@text_cache
def combine_kernel(has_bias: bool, has_shared: bool, has_gate: bool, has_res: bool) -> Kernel:
    """The exact combine (:func:`.moe_kernels.split_combine_kernel`'s inputs, outputs and
    rounding) with each warp's products on the tensor cores: a group of ``K * S`` warps owns
    16 output rows of one token; warp ``k * S + s`` takes slice ``s`` of expert ``k``'s inputs
    (:func:`_mma_sums`), and the first warp's lane ``r`` adds row ``r``'s partial sums, rounds
    each expert's projection and adds the weighted projections in expert order
    (:func:`.moe_kernels.expert_rows_tail`).

    Template constants: ``T``, ``P``, ``I``, ``D``, ``BITS`` (4), ``GROUP_SIZE``, ``K``, ``S``,
    ``R`` (16), ``NB`` (groups per token), ``STEPS`` (``I / (64 S)``). Runtime: ``rt[0]`` =
    tokens."""
    inputs = mk._combine_inputs("affine", has_bias, has_shared, has_gate, has_res)
    sums = _mma_sums([("w0", "s0", "b0")], "I", "D", "(size_t)ex * D")
    body = f"""
  ZX_SHARED float red[K * S * R];
  const int t = (int)gid / NB;
  if (t >= rt[0]) {{
    return;
  }}
  const int row0 = ((int)gid % NB) * R;
  const int slot = t * K + (int)warp / S;
  const int ex = static_cast<int>(idx[slot]);
  const T* xp = h + (size_t)slot * I;
  const int in0 = ((int)warp % S) * STEPS * 64;
{sums}
  if (q == 0) {{
    red[(int)warp * R + g] = acc[0][0];
    red[(int)warp * R + g + 8] = acc[0][1];
  }}
  zx_barrier();
  if (warp != 0u) {{
    return;
  }}
{mk.expert_rows_tail(has_bias, has_shared, has_gate, has_res)}"""
    name = "qmv_combine_affine_exact" + ("_res" if has_res else "") + "_mma"
    return Kernel(name, inputs, ["out"], body, header=_HEADER)


# Dense matvecs (quant.qmv and its fused forms: bias, residual, a dense MLP's gate/up) on the
# tensor cores (dense_kernel) where they cover the call. Off: not yet timed on a GPU.
MMA_DENSE = False


def covers_dense(kind: str, mode: str, bits: int, group_size: int, dtype, d: int,
                 warps: int) -> bool:  # fmt: skip
    """Whether :func:`dense_kernel` takes this call."""
    return (
        (kind == "plain" or (kind in GATED and kind != "swiglu_oai"))
        and _format_ok(mode, bits, group_size, dtype)
        and warps > 0
        and d % (64 * warps) == 0
    )


@text_cache
def dense_kernel(kind: str, has_bias: bool, has_res: bool) -> Kernel:
    """A dense matvec (``"plain"``, or a gated kind's gate and up with its activation) on the
    tensor cores (:func:`_matvec_text` with ``gather=False``). Inputs, outputs and rounding as
    :func:`.quant_kernels.split_matvec_kernel`'s with ``gather=False`` (``has_res``: plain
    only).

    Template constants: ``T`` (bfloat16), ``D``, ``N``, ``BITS`` (4), ``GROUP_SIZE``, ``R``
    (16), ``NB`` (groups per row of x), ``W``, ``STEPS`` (``D / (64 W)``). Runtime: ``rt[0]``
    = rows of x."""
    if kind != "plain" and (kind not in GATED or kind == "swiglu_oai"):
        raise ValueError(f"[mma_kernels] no tensor-core dense matvec for {kind!r}")
    if has_res and kind != "plain":
        raise ValueError("[mma_kernels] a residual only with the plain dense matvec")
    inputs, outputs, body = _matvec_text(kind, False, False, has_bias, has_res)
    name = f"qmv_{kind}_affine_mma{'_bias' if has_bias else ''}{'_res' if has_res else ''}"
    return Kernel(name, inputs, outputs, body, header=_HEADER)
