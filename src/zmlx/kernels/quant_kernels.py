"""Kernel bodies for quantized matrix-vector products (shared by the quant and moe families).

Formats (MLX's, see ``mx.quantize``): a weight row of ``D`` inputs is ``D * BITS / 32`` packed
uint32 words, element ``i`` at bits ``(i % (32 / BITS)) * BITS`` of word ``i / (32 / BITS)``,
least significant first. ``affine`` rows carry a scale and a bias per group of ``GROUP_SIZE``
elements in the activation dtype (``w = scale * q + bias``); ``mxfp4`` rows carry one uint8
e8m0 scale (``2^(s - 127)``) per 32 e2m1 values and no bias.

How the matvec kernels stream weights (decode is memory-bound):

* One warp owns ``R`` consecutive output rows of one slot (a token, or a token's expert).
  Lane ``l`` reads words ``l, l + 32, l + 64, ...`` of each row, so every load instruction of
  the warp reads 128 contiguous bytes and each weight byte is read exactly once.
* The lane's slice of the activation vector (``D / 32`` floats, the same columns for every
  row) is loaded once into registers with its per-word sums, then reused for all ``R`` rows.
* An affine element is decoded by writing ``q`` into the mantissa of a float with no
  int-to-float conversion. The first form wrote each element into the top mantissa bits of
  ``1.0f`` (a shift and a mask an element: ``1 + q / 2^BITS``); with :data:`PAIRED_UNITS`
  (``zx_q_val``) a 4-bit word's elements ``2i`` and ``2i + 1`` share one shift and become
  ``q`` (``256 + q`` less 256) and ``16 + q``, so ``sum(x * q) = sum(x * (C + q)) - sum(C *
  x)`` with the second sum taken once per word of x. Integer ops run at half the float rate
  on an H100, and they bound the gate/up kernel. The products are exact for fp16/bf16
  activations, and accumulation is float32 throughout.
* Lane partial sums of all ``R`` rows are kept until the end and reduced with warp shuffles
  once, so the row loop has no shuffles. Even so, NVRTC's code for the plain row loop loads
  each word right before its math (few registers, a wait per word); the batched row loop
  (``BATCH_LOADS``) issues a row's loads first.

Rows per warp: ``R = 4`` (``2`` when two weights share the row loop) when that still leaves
1024 or more warps, else fewer; larger ``R`` amortises the activation load. Groups are 128
threads (4 warps) so small launches still spread over many SMs.

What bounded them at decode (an H100, Qwen3-30B-A3B's shapes) was first the runtime-parameter
read: the slot count ``rt`` lived in MLX's host-resident pool of small unified-memory arrays,
and every warp's read of it crossed the bus (18-21 us for a 512x2048 matvec,
``kernel_profile_tile_micro_h100.json``; 3.7 us once in device memory,
``kernel_profile_vec16_micro_h100.json``; see :func:`zmlx.core.kernel.vector`). The earlier
Nsight Compute profile (``benchmarks/capsules/ncu_qmv_swiglu_h100.txt``: warps waiting on L1
most of the time, as slow with the experts in L2 as in DRAM) was taken with that read in
place. A lane's ``D / 32`` inputs of x are also more than the compiler keeps in registers, so
they are reloaded for every row. The gathered
matvecs therefore split each row across the warps of a group when the row divides evenly
(:func:`split_matvec_kernel`, :data:`SPLIT_WARPS`), so a lane holds ``D / (32 W)`` inputs.
"""

from __future__ import annotations

import math
from functools import cache, wraps

from ..core.kernel import Kernel

MODES = ("affine", "mxfp4")
KERNEL_FORMATS = {("affine", 4), ("affine", 8), ("mxfp4", 4)}
KERNEL_GROUPS = {"affine": (32, 64, 128), "mxfp4": (32,)}
MAX_ROWS = 16  # token rows (T) the decode kernels take; more take the reference path
X_REG_MAX = 4096  # inputs per row held in registers (D / 32 floats per lane); longer rows stream x
GROUP = 128  # threads per group
# Batched row loop: each lane issues all loads of a row (words, scales, biases) before the
# math (see _row_loop); results are bit-identical either way. Off: in a Qwen3 decode step on an
# H100 it gave 28.9 against 29.8 us for gate/up and 35.4 against 31.7 us for the down
# projection (kernel_profile_qwen3_variants_h100.json).
BATCH_LOADS = False
# Packed words per weight load: 4 is one 16-byte load (batched row loop; rows of a multiple of
# 4 words). Off: 34.2 against 29.8 us for gate/up in the same profile (128 registers).
LOAD_WORDS = 1
# Warps a row of the gathered decode matvecs is split across (split_matvec_kernel; < 2: one
# warp a row). On an H100 at Qwen3-30B-A3B's gate/up shape: 22.4 us against 25.5 us for one
# warp a row, 26.1 us with 4 warps (kernel_profile_split_h100.json).
SPLIT_WARPS = 8
# Rows per group of the split kernel (2: 23.4 us, 8: 26.2 us at 4 warps). With lane rows, one
# Qwen3 block: 18.2 us at 4 rows and 8 warps against 20.0 (2 rows), 20.1 (8), 19.3 (16 warps),
# 19.4 (4 warps) (moe_block_device_rows_h100.json, at e32460f).
SPLIT_ROWS = 4
# Dense matvecs (quant.qmv and its fused forms) use the split kernel too where rows split.
SPLIT_DENSE = True
# Split kernels: loads of all a group's rows issued before the math (see _split_rows). One
# Qwen3-30B-A3B block's gate/up on an H100: 12.4 against 13.5 us a row at a time
# (moe_block_device_sweep_h100.json). 16-byte weight loads in this kernel (4 words a lane, so 2
# warps a 2048-input row) were slower in every family and were removed: Qwen3's gate/up 17.0
# against 12.9 us (moe_block_device_vec_h100.json, at af9a81f). Hints from the gate/up kernel
# that bring the down projection's rows of its experts into L2 (prefetch.global.L2, after the
# math or before the loads) were removed too: in a Qwen3 decode step gate/up took 13.8 (14.1)
# against 12.3 us and the combine, reading from L2, 6.7 (6.8) against 7.2
# (kernel_profile_prefetch_qwen3_h100.json, at 5ac8c70). A bulk prefetch of them by the copy
# engine (cp.async.bulk.prefetch.L2, one per group and array) changed nothing: one Qwen3 block
# 18.3 us with or without (moe_block_device_prefetch_h100.json, at 5430428).
SPLIT_ALL_ROWS = True
# Least share of its last round of 32 lanes a split part's words fill (rows that split into
# no whole rounds, e.g. GPT-OSS's 2880 inputs: 6 parts of 60 words, 94%).
SPLIT_MIN_FILL = 0.85
# Groups of the gathered split matvec (gate/up) the compiler must fit on one multiprocessor
# (launch bounds, capping registers); 0: its own choice (58 registers at Qwen3's gate/up: 4).
SPLIT_MIN_GROUPS = 0
# 4-bit affine words decoded in pairs (zx_q_val): elements 2i and 2i + 1 moved by one shift to
# mantissa bits 15-18 and 19-22, each then one mask-and-or away from the float 256 + q (less
# 256 in a float add: q exactly) or 16 + q, so a word costs 4 shifts and 8 logic ops rather
# than 8 and 8 (integer ops, which run at half the float rate, bound the gate/up kernel:
# ncu_stalls_qwen3_swiglu_h100.txt). The sums of x * (C + q) less sum(C * x) round otherwise
# than those of x * (1 + q / 16): last-place differences, as small (an H100 measurement of a
# first form that kept C = 256 had 7x the error and lost agreement in teacher-forced decoding:
# moe_decode_qwen3_paired_h100.json).
PAIRED_UNITS = True
# The gathered gate/up kernel on the tensor cores (mma_kernels.gate_up_kernel) where it
# covers the call (affine 4-bit, groups of a multiple of 64, bfloat16 x, no bias). One block's
# experts on an H100, device time of 8 chained blocks, median of 3 rounds taken in turn
# (moe_block_device_mma_rounds_h100.json, at dbf86a7): Qwen3-30B-A3B 16.4 us against 18.9
# (gate/up 9.4 against 11.8), LFM2-8B-A1B 34.1 against 35.5, GLM-4.7-Flash 30.4 against 33.3.
# In a Qwen3 decode step: 78.5 against 80.5 us busy a layer, gate/up 9.2 against 11.8
# (kernel_profile_mma_qwen3_h100.json, at 8b262e2).
# Its first form (x's fragments in shared memory, every lane holding all steps' words and
# applying every step's scales) was slower than the split kernel: 17.3 us at 32 warps a group
# and 17.7 at 8 (108 registers) against 11.8 (moe_block_device_mma_h100.json, at e32460f).
MMA_GATE_UP = True
# Most warps a group of it: each a slice of the inputs in steps of 64 (at 2048 inputs, 8
# warps: 4 steps a warp, 64 registers under NVRTC 13's sm_90a build, 384 groups of 256 threads
# for Qwen3-30B-A3B's 8 experts).
MMA_WARPS = 8
# The split kernels' last step (the W partial sums of each row added, the row rounded and
# stored; the combine's K experts added in order) with lane r of the first warp on row r,
# rather than lane 0 on every row in turn: same sums in the same order, bit-identical.
LANE_ROWS = True
# The split kernels' per-warp sums of their R rows (of each weight) in one butterfly
# (warp_sums_to_shared) rather than a warp sum per value.
TRANSPOSED_SUMS = True

HEADER = r"""
// Affine element at bit offset sh of w, as the float 1 + q / 2^BITS (q in the top mantissa bits).
template <int BITS>
ZX_INLINE float zx_q_unit(uint w, int sh) {
  const int pos = 23 - BITS;
  const uint mask = ((1u << BITS) - 1u) << pos;
  uint v;
  if (sh <= pos) {
    v = w << (pos - sh);
  } else {
    v = w >> (sh - pos);
  }
  return zx_as_float(0x3F800000u | (v & mask));
}
// Affine element e of w as the float C + q (C = zx_q_base<BITS>(e)). 4 bits: elements 2i and
// 2i + 1 move by one shift to mantissa bits 15-18 (256 + q, less 256: C = 0, exact) and 19-22
// (C = 16); 8 bits: to bits 15-22 (C = 256).
template <int BITS>
ZX_INLINE float zx_q_val(uint w, int e) {
  const int src = BITS == 4 ? 4 * (e & ~1) : BITS * e;
  const int top = (BITS == 4 && (e & 1) != 0) ? 19 : 15;
  const uint v = src <= 15 ? (w << (15 - src)) : (w >> (src - 15));
  const float f = zx_as_float((v & (((1u << BITS) - 1u) << top)) | (top == 19 ? 0x41800000u : 0x43800000u));
  return (BITS == 4 && (e & 1) == 0) ? f - 256.0f : f;
}
template <int BITS>
ZX_INLINE float zx_q_base(int e) {
  return BITS == 4 ? ((e & 1) != 0 ? 16.0f : 0.0f) : 256.0f;
}
// e2m1 element at bit offset sh of w: sign, two exponent bits, one mantissa bit.
ZX_INLINE float zx_fp4(uint w, int sh) {
  uint v = (w >> sh) & 0xFu;
  uint mag = v & 7u;
  uint bits = (mag >= 2u) ? ((mag << 22) + 0x3F000000u) : (mag == 1u ? 0x3F000000u : 0u);
  return zx_as_float(bits | ((v & 8u) << 28));
}
// e8m0 scale 2^(s - 127); s == 0 is 2^-127 as in MLX.
ZX_INLINE float zx_e8m0(uint s) {
  return s == 0u ? zx_as_float(0x00400000u) : zx_as_float(s << 23);
}
"""


# Settings read while a kernel's text is generated: part of the key of the cached kernels.
_TEXT_SETTINGS = ("PAIRED_UNITS", "TRANSPOSED_SUMS", "LANE_ROWS")


def text_cache(fn):
    """:func:`functools.cache` keyed also by the settings that shape generated kernel text
    (:data:`_TEXT_SETTINGS`), so changing one (a benchmark sweep, a test) builds anew."""

    @cache
    def build(settings, *args, **kw):
        return fn(*args, **kw)

    @wraps(fn)
    def cached(*args, **kw):
        return build(tuple(globals()[n] for n in _TEXT_SETTINGS), *args, **kw)

    cached.cache_clear = build.cache_clear  # type: ignore[attr-defined]
    return cached


def load_words(d: int, bits: int) -> int:
    """Words per weight load for rows of ``d`` inputs at ``bits``: :data:`LOAD_WORDS` when a
    row is a whole number of such loads, else 1."""
    if LOAD_WORDS not in (1, 4):  # the row loop loads one word or four (zx_ld4)
        raise ValueError(f"[quant_kernels] expected LOAD_WORDS 1 or 4, got {LOAD_WORDS!r}")
    nw = d * bits // 32
    return LOAD_WORDS if nw % LOAD_WORDS == 0 else 1


def load_plan(d: int, bits: int) -> tuple[bool, int]:
    """``(batch, vec)`` for the row loop of rows of ``d`` inputs (see :func:`_row_loop`)."""
    vec = load_words(d, bits)
    return BATCH_LOADS or vec > 1, vec


def kernel_covers(mode: str, bits: int, group_size: int) -> bool:
    """Whether the matvec kernels handle this quantization format."""
    return (mode, bits) in KERNEL_FORMATS and group_size in KERNEL_GROUPS[mode]


def rows_per_warp(slots: int, n_rows: int, joint: int, d: int) -> int:
    """Rows each warp owns (see the module docstring for why)."""
    cap = 4 if joint == 1 else 2
    if d > 2048:
        cap = min(cap, 2)
    r = cap
    while r > 1 and slots * math.ceil(n_rows / r) < 1024:
        r //= 2
    return r


# ---------------------------------------------------------------------------------------
# Body pieces (Python builds each body once per op variant; sizes are template constants)


# The pre-norm of a decoder layer, folded into the x load (``norm``): ``h = x + xa`` rounded to
# T, then MLX's rms_norm of h (``nrmw * T(h * rsqrt(mean(h^2) + eps))`` with the product in T).
# Each warp holds a whole row (lane slices), so the mean is one warp reduction.
_PRENORM = """
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    const int wi = ((j / VEC) * 32 + (int)lane) * VEC + j % VEC;
#pragma unroll
    for (int e = 0; e < EPW; ++e) {
      float v = 0.0f;
      if (NW % (32 * VEC) == 0 || wi < NW) {
        v = zx_rnd<T>(static_cast<float>(xp[wi * EPW + e]) + static_cast<float>(ap[wi * EPW + e]));
      }
      xr[j * EPW + e] = v;
      ss += v * v;
    }
  }
  const float nrm = zx_rsqrt(zx_warp_sum(ss) / (float)(NW * EPW) + npr[0]);
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    const int wi = ((j / VEC) * 32 + (int)lane) * VEC + j % VEC;
#pragma unroll
    for (int e = 0; e < EPW; ++e) {
      if (NW % (32 * VEC) == 0 || wi < NW) {
        const float y = zx_rnd<T>(xr[j * EPW + e] * nrm);
        xr[j * EPW + e] = zx_rnd<T>(static_cast<float>(nrmw[wi * EPW + e]) * y);
      }
    }
  }
"""


def _prologue(d: str, regs: bool, mode: str, norm: bool = False, vec: int = 1) -> str:
    """Constants for rows of ``d`` inputs, and the lane's slice of x (``xp``) in registers;
    with ``norm``, of the pre-norm of ``xp + ap`` (see :data:`_PRENORM`; needs ``regs``).

    ``vec`` words per load: the lane's ``j``-th word (of ``NJ``) is word
    ``((j / VEC) * 32 + lane) * VEC + j % VEC`` of a row (``VEC = 1``: ``j * 32 + lane``;
    ``VEC = 4``: four consecutive words per 16-byte load, lanes side by side); words past the
    row's ``NW`` are skipped."""
    text = f"""
  constexpr int EPW = 32 / BITS;
  constexpr int NW = {d} / EPW;
  constexpr int VEC = {vec};
  constexpr int NJ = (NW + 32 * VEC - 1) / (32 * VEC) * VEC;
  constexpr int NG = {d} / GROUP_SIZE;
"""
    if norm:
        if not regs:
            raise ValueError("[quant_kernels] the folded pre-norm needs x in registers")
        sums = mode == "affine"
        text += "  float xr[NJ * EPW];\n" + ("  float xs[NJ];\n" if sums else "") + _PRENORM
        if sums:
            paired = PAIRED_UNITS
            text += f"""{"  float xc[NJ];" if paired else ""}
#pragma unroll
  for (int j = 0; j < NJ; ++j) {{
    float sum = 0.0f;
    float csum = 0.0f;
#pragma unroll
    for (int e = 0; e < EPW; ++e) {{
      sum += xr[j * EPW + e];
      csum += xr[j * EPW + e] * zx_q_base<BITS>(e);
    }}
    xs[j] = sum;{"  xc[j] = csum;" if paired else ""}
  }}
"""
        return text
    if regs:
        text += _x_registers(mode)
    return text


def _x_registers(mode: str) -> str:
    """The lane's slice of x (``xp``; words ``wi`` of :func:`_prologue`'s layout) as floats in
    ``xr``, with each word's sum in ``xs`` (affine) and, with :data:`PAIRED_UNITS`, its sum
    weighted by each element's ``zx_q_base`` in ``xc``; zeros past the row's ``NW`` words."""
    sums = mode == "affine"
    paired = sums and PAIRED_UNITS
    return f"""
  float xr[NJ * EPW];{"  float xs[NJ];" if sums else ""}{"  float xc[NJ];" if paired else ""}
#pragma unroll
  for (int j = 0; j < NJ; ++j) {{
    const int wi = ((j / VEC) * 32 + (int)lane) * VEC + j % VEC;
    float sum = 0.0f;
    float csum = 0.0f;
#pragma unroll
    for (int e = 0; e < EPW; ++e) {{
      const float v = (NW % (32 * VEC) == 0 || wi < NW) ? static_cast<float>(xp[wi * EPW + e]) : 0.0f;
      xr[j * EPW + e] = v;
      sum += v;{"  csum += v * zx_q_base<BITS>(e);" if paired else ""}
    }}{"  xs[j] = sum;" if sums else ""}{"  xc[j] = csum;" if paired else ""}
  }}
"""


def _word_dot(
    mode: str,
    mats: list[tuple[str, str, str]],
    regs: bool,
    acc: str,
    loaded: bool = False,
    at: str | None = None,
) -> str:
    """Accumulate word ``wi`` of the current row of each weight into ``acc_<m>[r]``.
    ``loaded``: the word and its scale (and bias) are already in ``qw<m>[j]``, ``sc<m>[j]``
    (``bi<m>[j]``) (see :func:`_batched_word_loads`), or at index ``at`` of each when given
    (see :func:`_split_rows`); else they are loaded here."""
    out = [] if loaded else ["        const int g = (wi * EPW) / GROUP_SIZE;"]
    if not regs:
        out.append("        float xw[EPW];")
        out.append("        float xsum = 0.0f;")
        if mode == "affine" and PAIRED_UNITS:
            out.append("        float xcsum = 0.0f;")
        out.append("#pragma unroll")
        out.append("        for (int e = 0; e < EPW; ++e) {")
        out.append("          xw[e] = static_cast<float>(xp[wi * EPW + e]);")
        if mode == "affine":
            out.append("          xsum += xw[e];")
            if PAIRED_UNITS:
                out.append("          xcsum += xw[e] * zx_q_base<BITS>(e);")
        out.append("        }")
    xv = "xr[j * EPW + e]" if regs else "xw[e]"
    xsum = "xs[j]" if regs else "xsum"
    xc = "xc[j]" if regs else "xcsum"
    for m, (w, s, b) in enumerate(mats):
        if at is not None:
            q, sc, bi = f"qw{m}[{at}]", f"sc{m}[{at}]", f"bi{m}[{at}]"
        elif loaded:
            q, sc, bi = f"qw{m}[j]", f"sc{m}[j / VEC]", f"bi{m}[j / VEC]"
        else:
            q, sc, bi = f"qw{m}", f"sc{m}", f"bi{m}"
        if not loaded:
            out.append(f"        const uint qw{m} = {w}[wbase + wi];")
        if mode == "affine":
            if not loaded:
                out.append(f"        const float sc{m} = static_cast<float>({s}[gbase + g]);")
                out.append(f"        const float bi{m} = static_cast<float>({b}[gbase + g]);")
            if PAIRED_UNITS:  # sum(x * (C + q)) - sum(C * x) = sum(x * q)
                unit, base, scale = "zx_q_val<BITS>({q}, e)", xc, sc
            else:  # sum(x * (1 + q / 2^BITS)) - sum(x), times 2^BITS
                unit, base = "zx_q_unit<BITS>({q}, e * BITS)", xsum
                scale = f"({sc} * (float)(1 << BITS))"
            out.append(f"        float dq{m} = -{base};")
            out.append("#pragma unroll")
            out.append("        for (int e = 0; e < EPW; ++e) {")
            out.append(f"          dq{m} += {xv} * {unit.format(q=q)};")
            out.append("        }")
            out.append(f"        {acc}{m}[r] += {scale} * dq{m} + {bi} * {xsum};")
        else:
            if not loaded:
                out.append(
                    f"        const float sc{m} = zx_e8m0(static_cast<uint>({s}[gbase + g]));"
                )
            out.append(f"        float dq{m} = 0.0f;")
            out.append("#pragma unroll")
            out.append("        for (int e = 0; e < EPW; ++e) {")
            out.append(f"          dq{m} += {xv} * zx_fp4({q}, e * BITS);")
            out.append("        }")
            out.append(f"        {acc}{m}[r] += {sc} * dq{m};")
    return "\n".join(out)


def _load_arrays(mode: str, nm: int, words: str, groups: str, pad: str) -> list[str]:
    """Declarations of the registers a lane loads a row's words into (``qw<m>``, ``words``
    long) with their scales and biases (``sc<m>``, ``bi<m>``, ``groups`` long)."""
    out = []
    for m in range(nm):
        out.append(f"{pad}uint qw{m}[{words}];")
        out.append(f"{pad}float sc{m}[{groups}];")
        if mode == "affine":
            out.append(f"{pad}float bi{m}[{groups}];")
    return out


def _scale_loads(mode: str, m: int, s: str, b: str, at: str, pad: str) -> list[str]:
    """Weight ``m``'s scale (and bias) of group ``g`` at ``gbase`` into ``sc<m>[at]``
    (``bi<m>[at]``), as floats (mxfp4: the e8m0 scale decoded)."""
    if mode == "affine":
        return [f"{pad}sc{m}[{at}] = static_cast<float>({s}[gbase + g]);",
                f"{pad}bi{m}[{at}] = static_cast<float>({b}[gbase + g]);"]  # fmt: skip
    return [f"{pad}sc{m}[{at}] = zx_e8m0(static_cast<uint>({s}[gbase + g]));"]


def _batched_word_loads(mode: str, mats: list[tuple[str, str, str]], vec: int = 1) -> str:
    """Load the lane's words of the current row of each weight into ``qw<m>[j]``, with their
    scales (and biases) into ``sc<m>[j / VEC]`` (``bi<m>[j / VEC]``): every load issued before
    any is used. ``vec = 4``: four words (one quantization group or less) per 16-byte load
    (``zx_ld4``; ``al<m>`` says the weight's base is 16-byte aligned)."""
    out = _load_arrays(mode, len(mats), "NJ", "NJ / VEC", "      ")
    out += ["#pragma unroll", "      for (int v = 0; v < NJ / VEC; ++v) {",
            "        const int wi = (v * 32 + (int)lane) * VEC;",
            "        const bool ok = NW % (32 * VEC) == 0 || wi < NW;",
            "        const int g = ok ? (wi * EPW) / GROUP_SIZE : 0;"]  # fmt: skip
    for m, (w, s, b) in enumerate(mats):
        if vec == 1:
            out.append(f"        qw{m}[v] = ok ? {w}[wbase + wi] : 0u;")
        else:
            out += [f"        zx_u4 q{m};",
                    f"        if (ok) {{ q{m} = zx_ld4({w} + wbase + wi, al{m}); }}",
                    f"        else {{ q{m}.x = 0u; q{m}.y = 0u; q{m}.z = 0u; q{m}.w = 0u; }}",
                    f"        qw{m}[v * 4] = q{m}.x;", f"        qw{m}[v * 4 + 1] = q{m}.y;",
                    f"        qw{m}[v * 4 + 2] = q{m}.z;", f"        qw{m}[v * 4 + 3] = q{m}.w;"]  # fmt: skip
        out += _scale_loads(mode, m, s, b, "v", "        ")
    out.append("      }")
    return "\n".join(out)


def _row_loop(
    mode: str,
    mats: list[tuple[str, str, str]],
    n: str,
    ebase: str,
    regs: bool,
    acc: str,
    batch: bool = False,
    vec: int = 1,
) -> str:
    """Lane partial sums of rows ``row0 .. row0 + R - 1`` (of ``n``) for each weight.

    ``batch``: each lane first loads all its words of the row (and their scales and biases),
    then does the math, so a warp waits for memory once per row rather than once per word
    (the compiler does not reliably hoist the loads of the plain loop: it keeps few
    registers). Same operations in the same order: bit-identical results.

    ``vec = 4`` (batched only): 16-byte loads of four words (see :func:`_prologue` for which
    words a lane owns); the sums run in another order, so results differ in rounding."""
    if vec != 1 and not batch:
        raise ValueError("[quant_kernels] 16-byte loads need the batched row loop")
    loads = _batched_word_loads(mode, mats, vec) + "\n" if batch else ""
    align = "".join(f"  const bool al{m} = zx_al16({w});\n" for m, (w, _, _) in enumerate(mats))
    return (
        (align if vec != 1 else "")
        + f"""
#pragma unroll
  for (int r = 0; r < R; ++r) {{
    const int row = row0 + r;
    if (row < {n}) {{
      const size_t wbase = (size_t)({ebase} + row) * NW;
      const size_t gbase = (size_t)({ebase} + row) * NG;
{loads}#pragma unroll
      for (int j = 0; j < NJ; ++j) {{
        const int wi = ((j / VEC) * 32 + (int)lane) * VEC + j % VEC;
        if (NW % (32 * VEC) == 0 || wi < NW) {{
{_word_dot(mode, mats, regs, acc, loaded=batch)}
        }}
      }}
    }}
  }}
"""
    )


def _acc_decl(names: list[str]) -> str:
    lines = [f"  float {a}[R];" for a in names]
    lines.append("#pragma unroll")
    lines.append("  for (int r = 0; r < R; ++r) {")
    lines += [f"    {a}[r] = 0.0f;" for a in names]
    lines.append("  }")
    return "\n".join(lines)


def _reduce(names: list[str]) -> str:
    lines = ["#pragma unroll", "  for (int r = 0; r < R; ++r) {"]
    lines += [f"    {a}[r] = zx_warp_sum({a}[r]);" for a in names]
    lines.append("  }")
    return "\n".join(lines)


def _qinputs(prefix: str, mode: str) -> list[str]:
    return [f"w{prefix}", f"s{prefix}"] + ([f"b{prefix}"] if mode == "affine" else [])


def _mat(prefix: str, mode: str) -> tuple[str, str, str]:
    return (f"w{prefix}", f"s{prefix}", f"b{prefix}" if mode == "affine" else "")


# ---------------------------------------------------------------------------------------
# Matvec kernels: out[slot, row] for one, two (SwiGLU) or three (q/k/v) weights


def _to_t(v: str) -> str:
    return f"static_cast<float>(static_cast<T>({v}))"


def _to_p(v: str) -> str:
    """``v`` rounded to the template dtype ``P`` (a kernel's promoted product dtype)."""
    return f"static_cast<float>(static_cast<P>({v}))"


def exact_accumulate(acc: str, y: str, w: str) -> str:
    """``acc += y * w`` rounded as MLX's ``(y * w[..., None]).sum(-2)`` rounds: the product
    to ``P``, then the running sum to ``P``, term by term in order."""
    return f"{acc} = {_to_p(acc + ' + ' + _to_p(f'zx_mul_rn({y}, {w})'))};"


# Gated activations of the two-weight kernels, of the rounded projections v0 (gate), v1 (up).
GATED = {
    # silu(g) * u rounded op by op, as mlx-lm's compiled swiglu: sigmoid, g * sigmoid, * u.
    "swiglu": _to_t(f"v0 * {_to_t('zx_sigmoid(v0)')}") + " * v1",
    "swiglu_oai": "",  # written out in _store (clamps and runtime alpha, limit)
    "geglu": "0.5f * v0 * (1.0f + zx_erf(v0 * 0.70710678118654752f)) * v1",
    "geglu_tanh": "0.5f * v0 * (1.0f + zx_tanh(0.7978845608028654f * (v0 + 0.044715f * v0 * v0 * v0))) * v1",
}


# The weights a matvec kind multiplies by, named by their input prefixes ("qkv" loads "q" in
# each of its three branches).
_JOINT = {"plain": ["0"], "qkv": ["q"], **{k: ["g", "u"] for k in GATED}}


def _matvec_signature(kind: str, mode: str, gather: bool, has_bias: bool, has_res: bool,
                      norm: bool = False) -> tuple[list[str], list[str]]:  # fmt: skip
    """Input and output names of a matvec kernel (one-word or tile) of this variant."""
    inputs = ["x"]
    for p in ("q", "k", "v") if kind == "qkv" else _JOINT[kind]:
        inputs += _qinputs(p, mode)
    if gather:
        inputs.append("idx")
    if has_bias:
        inputs += (
            ["bias_q", "bias_k", "bias_v"] if kind == "qkv" else [f"bias_{p}" for p in _JOINT[kind]]
        )
    if has_res:
        inputs.append("res")
    if kind == "swiglu_oai":
        inputs.append("fp")
    if norm:
        inputs += ["xa", "nrmw", "npr"]
    inputs.append("rt")
    return inputs, (["q_out", "k_out", "v_out"] if kind == "qkv" else ["out"])


@text_cache
def matvec_kernel(
    kind: str,
    mode: str,
    gather: bool,
    x_per_slot: bool,
    has_bias: bool,
    has_res: bool,
    regs: bool,
    norm: bool = False,
    batch: bool = False,
    vec: int = 1,
) -> Kernel:
    """The matvec kernel of one variant.

    Args:
        kind: ``"plain"`` (one weight), a gated activation of :data:`GATED` (gate and up
            weights, one activated output) or ``"qkv"`` (three weights, three outputs).
        mode: ``"affine"`` or ``"mxfp4"``.
        gather: weights are stacked per expert and ``idx[slot]`` picks one.
        x_per_slot: x has one row per slot (else one per token, shared by its ``K`` slots).
        has_bias: add a linear bias per output (per expert when ``gather``).
        has_res: add a residual (``plain`` only).
        regs: hold the lane's slice of x in registers.
        norm: x is a decoder layer's residual stream: the kernel multiplies the pre-norm
            ``rms_norm(x + xa, nrmw, npr[0])`` (MLX's rounding; needs ``regs``).
        batch: the batched row loop (see :func:`_row_loop`).
        vec: words per load (1, or 4 with ``batch``: 16-byte loads; rows of a multiple of 4
            words, see :func:`load_words`).

    Template constants: ``T`` (activation dtype), ``D`` (inputs), ``N`` (rows; ``NQ``,
    ``NK``, ``NV`` for q/k/v), ``BITS``, ``GROUP_SIZE``, ``R`` (rows per warp), ``NB``
    (warps per slot), ``K`` (slots per token). Runtime: ``rt[0]`` = number of slots.
    """
    inputs, outputs = _matvec_signature(kind, mode, gather, has_bias, has_res, norm)

    xrow = "slot" if (x_per_slot or not gather) else "slot / K"
    body = f"""
  const int wid = (int)(gid * (lsize / 32u) + warp);
  const int slot = wid / NB;
  if (slot >= rt[0]) {{
    return;
  }}
  const int wb = wid % NB;
  const T* xp = x + (size_t)({xrow}) * D;
"""
    if norm:
        body += f"  const T* ap = xa + (size_t)({xrow}) * D;\n"
    body += _prologue("D", regs, mode, norm, vec)
    e = "static_cast<int>(idx[slot])" if gather else "0"
    body += f"  const int ex = {e};\n"

    if kind == "qkv":
        body += _acc_decl(["acc0"])
        parts = []
        for m, (p, nn, prev) in enumerate(
            (("q", "NQ", "0"), ("k", "NK", "NBQ"), ("v", "NV", "NBQ + NBK"))
        ):
            cond = "if" if m == 0 else "} else if"
            lim = {0: "wb < NBQ", 1: "wb < NBQ + NBK", 2: "true"}[m]
            parts.append(f"  {cond} ({lim}) {{")
            parts.append(f"  const int row0 = (wb - ({prev})) * R;")
            parts.append(_row_loop(mode, [_mat(p, mode)], nn, f"ex * {nn}", regs, "acc", batch,
                                   vec))  # fmt: skip
            parts.append(_reduce(["acc0"]))
            parts.append(_qkv_store(p, nn, has_bias))
        body += "\n".join(parts) + "\n  }\n"
    else:
        names = [f"acc{m}" for m in range(len(_JOINT[kind]))]
        body += "  const int row0 = wb * R;\n"
        body += _acc_decl(names)
        mats = [_mat(p, mode) for p in _JOINT[kind]]
        body += _row_loop(mode, mats, "N", "ex * N", regs, "acc", batch, vec)
        body += _reduce(names)
        body += _store(kind, _JOINT[kind], gather, has_bias, has_res)
    return Kernel(
        f"qmv_{kind}_{mode}{'_gather' if gather else ''}{'_prenorm' if norm else ''}"
        f"{'_batched' if batch else ''}{f'_v{vec}' if vec != 1 else ''}",
        inputs,
        outputs,
        body,
        header=HEADER,
    )


def _bias_at(name: str, n: str, gather: bool) -> str:
    return f"static_cast<float>({name}[{'(size_t)ex * ' + n + ' + ' if gather else ''}row])"


def row_heads(lanes: bool, nm: int, fin: bool = True) -> tuple[list[str], str]:
    """The head of a store's loop over rows ``r`` of ``R`` and the format of row ``r``'s sum
    of weight ``{m}``. ``lanes`` (:data:`LANE_ROWS`, split kernels after
    :func:`_split_sum`): lane ``r`` takes row ``r`` and first adds its ``W`` partial sums
    from shared ``red`` (of ``nm`` weights) in warp order into ``fin<m>`` (``fin=False``:
    the caller does); otherwise lane 0 takes every row, its sums in ``acc<m>[r]``."""
    if not lanes:
        return ["  if (lane == 0u) {", "#pragma unroll", "    for (int r = 0; r < R; ++r) {"], (
            "acc{m}[r]"
        )
    head = ["  {", "    for (int r = (int)lane; r < R; r += 32) {"]
    if fin:
        head += [f"      float fin{m} = 0.0f;" for m in range(nm)]
        head += ["      for (int w = 0; w < W; ++w) {"]
        head += [f"        fin{m} += red[(w * R + r) * {nm} + {m}];" for m in range(nm)]
        head += ["      }"]
    return head, "fin{m}"


def _qkv_store(p: str, n: str, has_bias: bool, lanes: bool = False) -> str:
    bias = f"v = {_to_t('v + ' + _bias_at('bias_' + p, n, False))};" if has_bias else ""
    head, val = row_heads(lanes, 1)
    return (
        "\n"
        + "\n".join(head)
        + f"""
      const int row = row0 + r;
      if (row < {n}) {{
        float v = {_to_t(val.format(m=0))};
        {bias}
        {p}_out[(size_t)slot * {n} + row] = static_cast<T>(v);
      }}
    }}
  }}"""
    )


def _store(kind: str, parts: list[str], gather: bool, has_bias: bool, has_res: bool,
           lanes: bool = False, fin: bool = True) -> str:  # fmt: skip
    lines, val = row_heads(lanes, len(parts), fin)
    lines.append("      const int row = row0 + r;")
    lines.append("      if (row < N) {")
    # Round each projection to T (and add its bias in T) where mlx-lm's separate ops would.
    for m, p in enumerate(parts):
        lines.append(f"        float v{m} = {_to_t(val.format(m=m))};")
        if has_bias:
            lines.append(
                f"        v{m} = {_to_t(f'v{m} + ' + _bias_at('bias_' + p, 'N', gather))};"
            )
    if kind == "plain":
        if has_res:
            lines.append("        v0 = static_cast<float>(res[(size_t)slot * N + row]) + v0;")
        res = "v0"
    elif GATED[kind]:
        res = GATED[kind]
    else:  # GPT-OSS: gate clipped from above, up clipped both ways, (up + 1) * gate * sig
        lines.append("        const float alpha = fp[0];")
        lines.append("        const float limit = fp[1];")
        lines.append("        const float gc = zx_min(v0, limit);")
        lines.append("        const float uc = zx_max(zx_min(v1, limit), -limit);")
        res = "(uc + 1.0f) * (gc * zx_sigmoid(alpha * gc))"
    lines.append(f"        out[(size_t)slot * N + row] = static_cast<T>({res});")
    lines += ["      }", "    }", "  }"]
    return "\n".join(lines) + "\n"


def launch_shape(warps: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(grid, threadgroup)`` for ``warps`` warps in groups of :data:`GROUP` threads."""
    per = GROUP // 32
    groups = max(1, math.ceil(warps / per))
    return (groups * GROUP, 1, 1), (GROUP, 1, 1)


def warp_groups(groups: int, warps: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(grid, threadgroup)`` for ``groups`` groups of ``warps`` warps each (the split-row,
    split-expert and tile kernels, whose groups work together on rows)."""
    return (groups * warps * 32, 1, 1), (warps * 32, 1, 1)


# ---------------------------------------------------------------------------------------
# Dequantize: one thread per packed word, rounding exactly as mx.dequantize


@cache
def dequant_kernel(mode: str) -> Kernel:
    """Template constants: ``T`` (output dtype), ``BITS``, ``GROUP_SIZE``; ``rt[0]`` = words."""
    inputs = ["w", "s"] + (["b"] if mode == "affine" else []) + ["rt"]
    if mode == "affine":
        # MLX computes q * scale + bias in T: two roundings, never an fma.
        val = (
            "static_cast<T>(static_cast<float>(static_cast<T>(zx_mul_rn("
            "static_cast<float>((q >> (e * BITS)) & mask), sc))) + bi)"
        )
        load = (
            "  const float sc = static_cast<float>(s[g]);\n"
            "  const float bi = static_cast<float>(b[g]);\n"
        )
    else:
        # MLX: lut value (exact in T) times 2^(s - 127) computed in T.
        val = "static_cast<T>(zx_fp4(q, e * BITS) * sc)"
        load = "  const float sc = static_cast<float>(static_cast<T>(zx_e8m0(static_cast<uint>(s[g]))));\n"
    body = f"""
  constexpr int EPW = 32 / BITS;
  const uint mask = (1u << BITS) - 1u;
  const size_t i = tid;
  if (i >= (size_t)rt[0]) {{
    return;
  }}
  const uint q = w[i];
  const size_t g = (i * EPW) / GROUP_SIZE;
{load}#pragma unroll
  for (int e = 0; e < EPW; ++e) {{
    out[i * EPW + e] = {val};
  }}
"""
    return Kernel(f"dequantize_{mode}", inputs, ["out"], body, header=HEADER)


# ---------------------------------------------------------------------------------------
# Split rows: the warps of a group share a row's words (decode's gathered matvecs)


def _split_rows(mode: str, mats: list[tuple[str, str, str]], n: str, ebase: str, ways: str,
                part: str, all_rows: bool, before_x: str = "") -> str:  # fmt: skip
    """Lane partial sums ``acc<m>[r]`` of rows ``row0 .. row0 + R - 1`` (of ``n``) of each
    weight over part ``part`` of ``ways`` of each row (``NW``, ``NG``: the part's words and
    groups, from :func:`_prologue`'s constants), with the lane's slice of x (``xp``) loaded
    here (:func:`_x_registers`). Words past the part's ``NW`` (a last round of lanes partly
    filled) count as zero.

    ``all_rows``: every lane issues the loads of all ``R`` rows (words, scales, biases)
    before any math, and before loading x, so a warp waits for memory once per group of rows
    rather than once per row and x's latency hides behind the weights'; rows past ``n`` load
    row ``n - 1`` and are not stored. Otherwise x first, then one row's loads at a time. The
    sums run in the same order either way: bit-identical results. ``before_x``: lines run
    after the weights' loads are issued and before x is loaded (a wait for x's producer in a
    fused launch; ``all_rows`` only)."""
    if before_x and not all_rows:
        raise ValueError("[quant_kernels] before_x needs all_rows")
    rows = "R" if all_rows else "1"
    at = "r * NJ + j" if all_rows else "j"
    decl = _load_arrays(mode, len(mats), f"{rows} * NJ", f"{rows} * NJ", "  ")
    loads = [f"    const int row = row0 + r < {n} ? row0 + r : {n} - 1;",
             f"    const size_t wbase = (size_t)({ebase} + row) * (NW * {ways}) + ({part}) * NW;",
             f"    const size_t gbase = (size_t)({ebase} + row) * (NG * {ways}) + ({part}) * NG;",
             "#pragma unroll", "    for (int j = 0; j < NJ; ++j) {",
             "      const int wi = j * 32 + (int)lane;",
             "      const bool ok = NW % 32 == 0 || wi < NW;",
             "      const int g = ok ? (wi * EPW) / GROUP_SIZE : 0;"]  # fmt: skip
    for m, (w, sc, b) in enumerate(mats):
        loads.append(f"      qw{m}[{at}] = ok ? {w}[wbase + wi] : 0u;")
        loads += _scale_loads(mode, m, sc, b, at, "      ")
    loads.append("    }")
    math_ = ["#pragma unroll", "    for (int j = 0; j < NJ; ++j) {",
             "      const int wi = j * 32 + (int)lane;",
             _word_dot(mode, mats, True, "acc", loaded=True, at=at), "    }"]  # fmt: skip
    head = ["#pragma unroll", "  for (int r = 0; r < R; ++r) {"]
    x = [_x_registers(mode)]
    if all_rows:
        body = head + loads + ["  }"] + ([before_x] if before_x else []) + x + head + math_
        body += ["  }"]
    else:
        body = x + head + loads + math_ + ["  }"]
    return "\n".join(decl + body) + "\n"


def warp_sums_to_shared(names: list[str], slot: str) -> str:
    """Each of the ``R * len(names)`` values ``<name>[r]`` summed over the warp's 32 lanes and
    stored at ``slot`` (a format of ``r`` and ``m``, the name's index, e.g.
    ``"red[(int)warp * R + {r}]"``; no barrier).

    :data:`TRANSPOSED_SUMS`: the values share one butterfly. While ``P`` values (the count
    padded to a power of two) are left, a lane and its partner ``o`` lanes away
    (``o = 16, 8, ...``) each keep half of them and add the partner's copy of that half,
    so ``P`` values cost ``2 P - 1`` shuffles less the halving, plus one per level left
    (a 2048-input swiglu row of 4 rows: 11 shuffles against 40 for a warp sum per value); lane
    ``l`` ends with value ``l / (32 / P)`` and lanes ``0, 32 / P, ...`` store. Otherwise one
    warp sum per value, stored by lane 0. Each value's sum is the same tree of additions
    either way (lanes 16 apart, then 8, ...): bit-identical results."""
    nm = len(names)
    if not TRANSPOSED_SUMS:
        body = (
            _reduce(names)
            + "  if (lane == 0u) {\n#pragma unroll\n    for (int r = 0; r < R; ++r) {\n"
        )
        body += "".join(f"      {slot.format(r='r', m=m)} = {a}[r];\n" for m, a in enumerate(names))
        return body + "    }\n  }\n"
    fill = "".join(f"    ts[{m} * R + r] = {a}[r];\n" for m, a in enumerate(names))
    store = "".join(
        f"      {'if' if m == 0 else '} else if'} (tv < {m + 1} * R) {{\n"
        f"        {slot.format(r=f'(tv - {m} * R)', m=m)} = ts[0];\n"
        for m in range(nm)
    )
    return f"""  {{
  constexpr int TN = R * {nm};
  constexpr int TP = TN <= 1 ? 1 : TN <= 2 ? 2 : TN <= 4 ? 4 : TN <= 8 ? 8 : TN <= 16 ? 16 : 32;
  float ts[TP];
#pragma unroll
  for (int r = 0; r < R; ++r) {{
{fill}  }}
#pragma unroll
  for (int i = TN; i < TP; ++i) {{
    ts[i] = 0.0f;
  }}
#pragma unroll
  for (int h = TP / 2; h >= 1; h /= 2) {{
    const int o = 16 / (TP / 2 / h);
    const bool hi = ((int)lane & o) != 0;
#pragma unroll
    for (int i = 0; i < h; ++i) {{
      const float give = hi ? ts[i] : ts[i + h];
      const float keep = hi ? ts[i + h] : ts[i];
      ts[i] = keep + zx_shfl_xor(give, o);
    }}
  }}
#pragma unroll
  for (int o = 16 / TP; o >= 1; o /= 2) {{
    ts[0] += zx_shfl_xor(ts[0], o);
  }}
  const int tv = (int)lane / (32 / TP);
  if ((int)lane % (32 / TP) == 0 && tv < TN) {{
{store}      }}
  }}
  }}
"""


def rows_group_head(nm: int) -> str:
    """The head of a kernel whose groups each own ``R`` rows (of ``nm`` weights) of one slot
    (``NB`` groups a slot, ``rt[0]`` slots): shared ``red`` for its ``W`` warps' partial sums,
    ``slot`` and ``row0``; a group past the last slot leaves."""
    return f"""
  ZX_SHARED float red[W * R * {nm}];
  const int slot = (int)gid / NB;
  if (slot >= rt[0]) {{
    return;
  }}
  const int row0 = ((int)gid % NB) * R;
"""


def _split_sum(nm: str | int, lanes: bool) -> str:
    """After :func:`_split_rows`: each warp's sums ``acc<m>[r]`` (of ``nm`` weights) reduced
    over its lanes and left in shared ``red`` (:func:`warp_sums_to_shared`); then a block of
    the first warp opens (the caller closes it), in which the store adds each row's ``W``
    partial sums in warp order: with ``lanes`` (:data:`LANE_ROWS`; the store must get the
    same) lane ``r`` row ``r`` (see :func:`row_heads`), else here into ``acc<m>[r]`` for lane
    0's loop over the rows."""
    names = [f"acc{m}" for m in range(int(nm))]
    body = warp_sums_to_shared(names, f"red[((int)warp * R + {{r}}) * {nm} + {{m}}]")
    if lanes:  # the store adds each row's partial sums (row_heads with lanes=True)
        return body + "  zx_barrier();\n  if (warp == 0u) {\n"
    body += """  zx_barrier();
  if (warp == 0u) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
"""
    body += "".join(f"      acc{m}[r] = 0.0f;\n" for m in range(int(nm)))
    body += "      for (int w = 0; w < W; ++w) {\n"
    body += "".join(f"        acc{m}[r] += red[(w * R + r) * {nm} + {m}];\n"
                    for m in range(int(nm)))  # fmt: skip
    return body + "      }\n    }\n"


@text_cache
def split_qkv_kernel(mode: str, has_bias: bool, all_rows: bool = True) -> Kernel:
    """Attention's q, k and v projections (:func:`matvec_kernel`'s ``"qkv"``) in one launch of
    the split-row kernel: groups ``0 .. NBQ - 1`` own q's rows, the next ``NBK`` k's, the rest
    v's, each row split across the group's ``W`` warps as in :func:`split_matvec_kernel`.

    Template constants: ``T``, ``D``, ``NQ``, ``NK``, ``NV``, ``BITS``, ``GROUP_SIZE``, ``R``,
    ``NB`` (groups per row of x), ``NBQ``, ``NBK``, ``W``. Runtime: ``rt[0]`` = rows of x."""
    inputs, outputs = _matvec_signature("qkv", mode, False, has_bias, False)
    body = f"""
  ZX_SHARED float red[W * R];
  const int slot = (int)gid / NB;
  if (slot >= rt[0]) {{
    return;
  }}
  const int wb = (int)gid % NB;
  const T* xp = x + (size_t)slot * D + (int)warp * (D / W);
{_prologue("(D / W)", False, mode)}{_acc_decl(["acc0"])}"""
    for m, (p, nn, prev) in enumerate((("q", "NQ", "0"), ("k", "NK", "NBQ"),
                                       ("v", "NV", "NBQ + NBK"))):  # fmt: skip
        cond = {0: "  if (wb < NBQ) {", 1: "  } else if (wb < NBQ + NBK) {", 2: "  } else {"}[m]
        body += f"{cond}\n  const int row0 = (wb - ({prev})) * R;\n"
        body += _split_rows(mode, [_mat(p, mode)], nn, "0", "W", "(int)warp", all_rows)
        body += _split_sum(1, LANE_ROWS) + _qkv_store(p, nn, has_bias, LANE_ROWS) + "\n  }\n"
    body += "  }\n"
    name = f"qmv_qkv_{mode}_split{'_bias' if has_bias else ''}{'' if all_rows else '_r1'}"
    return Kernel(name, inputs, outputs, body, header=HEADER)


@text_cache
def split_matvec_kernel(kind: str, mode: str, x_per_slot: bool, has_bias: bool = False,
                        all_rows: bool = True, gather: bool = True,
                        has_res: bool = False) -> Kernel:  # fmt: skip
    """The kernel of :func:`split_matvec_parts`."""
    name, inputs, outputs, body = split_matvec_parts(kind, mode, x_per_slot, has_bias, all_rows,
                                                     gather, has_res)  # fmt: skip
    return Kernel(name, inputs, outputs, body, header=HEADER)


def split_matvec_parts(kind: str, mode: str, x_per_slot: bool, has_bias: bool = False,
                       all_rows: bool = True, gather: bool = True,
                       has_res: bool = False) -> tuple[str, list[str], list[str], str]:  # fmt: skip
    """Name, inputs, outputs and body of the gathered (or, ``gather=False``, dense) matvec
    with each row split across the ``W`` warps of a group.

    Profiled on an H100 (``ncu_qmv_swiglu_h100.txt``), the one-warp-a-row kernel waits on L1
    for most of its time: each lane holds ``D / 32`` inputs of x, more than the compiler keeps
    in registers, so it reloads x for every row, and a token's 8 experts give too few warps to
    hide that. Here warp ``w`` of a group owns inputs ``[w * D / W, (w + 1) * D / W)`` of
    the group's ``R`` rows (its slice of x loaded by :func:`_prologue`): a lane holds
    ``D / (32 W)`` inputs (8 at D = 2048, 4-bit, W = 8), issues the loads of its words of
    the group's rows before loading x and before the math (:func:`_split_rows`), and the
    ``W`` partial sums of a row meet in shared memory, added in warp order by the first warp.

    Kinds: ``"plain"`` or a gated activation of :data:`GATED` (``swiglu_oai``: input ``fp``
    holds alpha and limit); ``has_bias``: a bias per expert and row for each weight (inputs
    ``bias_<part>``, added to the rounded projection as mlx-lm adds it, per expert when
    ``gather``); ``has_res`` (dense ``"plain"``): input ``res`` added last, as
    :func:`matvec_kernel` adds it; no folded norm. Template constants: ``T``, ``D``, ``N``,
    ``BITS``, ``GROUP_SIZE``, ``K`` (gathered), ``R`` (rows per group), ``NB`` (groups per
    slot), ``W`` (warps per group; ``D / W`` a multiple of ``GROUP_SIZE``, see
    :func:`split_warps`). Runtime: ``rt[0]`` = slots (dense: rows of x).
    """
    if kind not in ("plain", *GATED):
        raise ValueError(f"[quant_kernels] no split-row kernel for {kind!r}")
    if has_res and (gather or kind != "plain"):
        raise ValueError("[quant_kernels] a residual only with the dense plain split kernel")
    parts = _JOINT[kind]
    inputs, outputs = _matvec_signature(kind, mode, gather, has_bias, has_res)
    nm = len(parts)
    names = [f"acc{m}" for m in range(nm)]
    mats = [_mat(p, mode) for p in parts]
    xrow = "slot" if (x_per_slot or not gather) else "slot / K"
    ex = "static_cast<int>(idx[slot])" if gather else "0"
    # _prologue's NW and NG are the warp's slice of a row: D / W inputs.
    body = (
        rows_group_head(nm)
        + f"""  const T* xp = x + (size_t)({xrow}) * D + (int)warp * (D / W);
{_prologue("(D / W)", False, mode)}  const int ex = {ex};
{_acc_decl(names)}{_split_rows(mode, mats, "N", "ex * N", "W", "(int)warp", all_rows)}"""
    )
    body += _split_sum(nm, LANE_ROWS)
    body += _store(kind, parts, gather, has_bias, has_res, LANE_ROWS)
    body += "  }\n"
    name = (f"qmv_{kind}_{mode}{'_gather' if gather else ''}_split{'_bias' if has_bias else ''}"
            f"{'_res' if has_res else ''}{'' if all_rows else '_r1'}")  # fmt: skip
    return name, inputs, outputs, body


def split_ways(d: int, bits: int, group_size: int, most: int, least: int = 2) -> int:
    """The most parts (``least .. most``) a row of ``d`` inputs splits into, each a whole
    number of quantization groups and filling at least :data:`SPLIT_MIN_FILL` of its last
    round of 32 lanes' words; 0 when none does (1 always does when ``least`` is 1)."""
    nw = d * bits // 32
    for w in range(most, max(least, 2) - 1, -1):
        if d % w or (d // w) % group_size:
            continue
        per = nw // w
        if per / (32 * math.ceil(per / 32)) >= SPLIT_MIN_FILL:
            return w
    return 1 if least <= 1 else 0


def split_warps(d: int, bits: int, group_size: int) -> int:
    """Warps a row is split across (:func:`split_matvec_kernel`): the most parts up to
    :data:`SPLIT_WARPS` a row of ``d`` inputs divides into (:func:`split_ways`), else 0 (no
    split kernel)."""
    return split_ways(d, bits, group_size, SPLIT_WARPS) if SPLIT_WARPS >= 2 else 0


# ---------------------------------------------------------------------------------------
# Tiles: 16-byte weight loads, x staged once per group in shared memory (decode's matvecs)

# Use the tile kernel for the matvecs it covers (dense and gathered; see tile_plan). Off: on an
# H100 at Qwen3-30B-A3B's decode shapes it was slower than the one-word kernels in every case
# (kernel_profile_vec16_micro_h100.json: q_proj 7.8 against 4.5 us, o_proj 12.2 against 8.3,
# lm_head 124 against 96, gathered gate/up 13.1 against 11.8 for the split-row kernel).
TILE = False
TILE_WARPS = 4  # warps per group; all of a group's warps work on one slot
TILE_ROWS = 4  # most rows a warp owns
TILE_MIN_WARPS = 1024  # fewer rows per warp until a launch has this many warps (or R = 1)
TILE_MAX_WORDS = 64  # weight words a lane holds at once (R * NCL * VW * weights)
TILE_MAX_D = 8192  # inputs a group stages in shared memory (float32: 32 KB)


def tile_plan(d: int, bits: int, group_size: int, mats: int, n: int, slots: int
              ) -> tuple[int, int] | None:  # fmt: skip
    """``(VW, R)`` of the tile kernel for rows of ``d`` inputs, or None when it does not
    take them: ``VW = 4`` words per load (rows must be whole 16-byte chunks, and a chunk
    lies in one quantization group: true of every kernel format) and ``R`` rows per warp (at
    most :data:`TILE_ROWS`, fewer when a lane would hold more than :data:`TILE_MAX_WORDS`
    words or the launch would have fewer than :data:`TILE_MIN_WARPS` warps)."""
    vw, epw = 4, 32 // bits
    if not TILE or d > TILE_MAX_D or d % (vw * epw) or group_size % (vw * epw):
        return None
    nw = d * bits // 32
    ncl = math.ceil(nw // vw / 32)
    per_row = ncl * vw * mats
    if per_row > TILE_MAX_WORDS:
        return None
    r = max(1, min(TILE_ROWS, TILE_MAX_WORDS // per_row))
    while r > 1 and slots * math.ceil(n / r) < TILE_MIN_WARPS:
        r //= 2
    return vw, r


def _tile_rows(mode: str, mats: list[tuple[str, str, str]], n: str, ebase: str) -> str:
    """Accumulate rows ``row0 .. row0 + R - 1`` (of ``n``; rows past it read row ``n - 1``
    and are not stored) of each weight into ``acc<m>[r]``: every weight load of the warp's rows
    issued first, then x staged in ``xsh`` (by the whole group, after its loads), then the
    math, chunk by chunk, with the chunk's ``EPC`` inputs of x read once for all rows."""
    affine = mode == "affine"
    out = []
    for m in range(len(mats)):
        out.append(f"  uint qw{m}[R][NCL * VW];")
        out.append(f"  float sc{m}[R][NCL];")
        if affine:
            out.append(f"  float bi{m}[R][NCL];")
    out += [
        "#pragma unroll",
        "  for (int r = 0; r < R; ++r) {",
        f"    const int row = zx_imin(row0 + r, {n} - 1);",
        f"    const size_t wrow = (size_t)({ebase} + row) * NW;",
        f"    const size_t grow = (size_t)({ebase} + row) * NG;",
        "#pragma unroll",
        "    for (int c = 0; c < NCL; ++c) {",
        "      const int ci = zx_imin(c * 32 + (int)lane, NC - 1);",
        "      const int g = (ci * EPC) / GROUP_SIZE;",
    ]
    for m, (w, s, b) in enumerate(mats):
        out += [
            "      {",
            f"        const zx_u4 v = zx_ld4({w} + wrow + (size_t)ci * 4, al{m});",
            f"        qw{m}[r][c * 4] = v.x;",
            f"        qw{m}[r][c * 4 + 1] = v.y;",
            f"        qw{m}[r][c * 4 + 2] = v.z;",
            f"        qw{m}[r][c * 4 + 3] = v.w;",
            "      }",
        ]
        if affine:
            out.append(
                f"      sc{m}[r][c] = static_cast<float>({s}[grow + g]) * (float)(1 << BITS);"
            )
            out.append(f"      bi{m}[r][c] = static_cast<float>({b}[grow + g]);")
        else:
            out.append(f"      sc{m}[r][c] = zx_e8m0(static_cast<uint>({s}[grow + g]));")
    out += ["    }", "  }"]
    out += [
        "  for (int i = (int)lid; i < D; i += (int)lsize) {",
        "    xsh[i] = static_cast<float>(xp[i]);",
        "  }",
        "  zx_barrier();",
        "#pragma unroll",
        "  for (int c = 0; c < NCL; ++c) {",
        "    const int ci = c * 32 + (int)lane;",
        "    if (NC % 32 == 0 || ci < NC) {",
        "      float xv[EPC];",
        "      float xsum = 0.0f;",
        "#pragma unroll",
        "      for (int e = 0; e < EPC; ++e) {",
        "        xv[e] = xsh[ci * EPC + e];",
        "        xsum += xv[e];",
        "      }",
        "#pragma unroll",
        "      for (int r = 0; r < R; ++r) {",
    ]
    for m in range(len(mats)):
        unit = "zx_q_unit<BITS>" if affine else "zx_fp4"
        out += [
            f"        float dq{m} = {'-xsum' if affine else '0.0f'};",
            "#pragma unroll",
            "        for (int v = 0; v < VW; ++v) {",
            f"          const uint q = qw{m}[r][c * VW + v];",
            "#pragma unroll",
            "          for (int e = 0; e < EPW; ++e) {",
            f"            dq{m} += xv[v * EPW + e] * {unit}(q, e * BITS);",
            "          }",
            "        }",
        ]
        if affine:
            out.append(f"        acc{m}[r] += sc{m}[r][c] * dq{m} + bi{m}[r][c] * xsum;")
        else:
            out.append(f"        acc{m}[r] += sc{m}[r][c] * dq{m};")
    out += ["      }", "    }", "  }"]
    return "\n".join(out) + "\n"


@cache
def tile_matvec_kernel(kind: str, mode: str, gather: bool, x_per_slot: bool, has_bias: bool,
                       has_res: bool) -> Kernel:  # fmt: skip
    """The tile matvec: what :func:`matvec_kernel` computes (same kinds, inputs and
    outputs, no folded norm), with fewer, wider loads and more of them in flight.

    A group of ``WB`` warps works on one slot (a token, or a token's expert), each warp on
    ``R`` consecutive rows. A row is ``NC`` chunks of ``VW = 4`` words (16 bytes,
    32 inputs at 4 bits), lane ``l`` owning chunks ``l, l + 32, ...``; a chunk lies in one
    quantization group, so it has one scale (and bias). Each lane first issues the loads of
    all its chunks of all ``R`` rows (with their scales), then the group stages the slot's
    x in shared memory as float32, and each chunk's inputs are read once from there for all
    ``R`` rows and every weight. The affine sum per chunk uses the one-word kernels' decoding
    (``x * (1 + q / 2^BITS)`` summed, less the inputs' sum); float32 throughout, and the
    lanes' partial sums meet in one warp reduction per row.

    Template constants: ``T``, ``D``, ``N`` (``NQ``, ``NK``, ``NV`` and group counts
    ``NBQ``, ``NBK`` for q/k/v), ``BITS``, ``GROUP_SIZE``, ``R``, ``VW`` (4, see
    :func:`tile_plan`), ``WB`` (warps per group), ``NB`` (groups per slot), ``K`` (slots per
    token, gathered). Runtime: ``rt[0]`` = slots.
    """
    if kind not in ("plain", "qkv", *GATED):
        raise ValueError(f"[quant_kernels] no tile kernel for {kind!r}")
    inputs, outputs = _matvec_signature(kind, mode, gather, has_bias, has_res)
    xrow = "slot" if (x_per_slot or not gather) else "slot / K"
    e = "static_cast<int>(idx[slot])" if gather else "0"
    body = f"""
  ZX_SHARED float xsh[D];
  constexpr int EPW = 32 / BITS;
  constexpr int NW = D / EPW;
  constexpr int EPC = VW * EPW;
  constexpr int NC = NW / VW;
  constexpr int NCL = (NC + 31) / 32;
  constexpr int NG = D / GROUP_SIZE;
  const int slot = (int)gid / NB;
  if (slot >= rt[0]) {{
    return;
  }}
  const int gb = (int)gid % NB;
  const T* xp = x + (size_t)({xrow}) * D;
  const int ex = {e};
"""
    if kind == "qkv":
        body += _acc_decl(["acc0"]) + "\n"
        for m, (p, nn, prev) in enumerate(
            (("q", "NQ", "0"), ("k", "NK", "NBQ"), ("v", "NV", "NBQ + NBK"))
        ):
            cond = "if" if m == 0 else "} else if"
            lim = {0: "gb < NBQ", 1: "gb < NBQ + NBK", 2: "true"}[m]
            body += f"  {cond} ({lim}) {{\n"
            body += f"  const int row0 = ((gb - ({prev})) * WB + (int)warp) * R;\n"
            body += f"  const bool al0 = zx_al16(w{p});\n"
            body += _tile_rows(mode, [_mat(p, mode)], nn, f"ex * {nn}")
            body += _reduce(["acc0"]) + "\n"
            body += _qkv_store(p, nn, has_bias) + "\n"
        body += "  }\n"
    else:
        names = [f"acc{m}" for m in range(len(_JOINT[kind]))]
        mats = [_mat(p, mode) for p in _JOINT[kind]]
        body += "  const int row0 = (gb * WB + (int)warp) * R;\n"
        body += "".join(f"  const bool al{m} = zx_al16({w});\n" for m, (w, _, _) in enumerate(mats))
        body += _acc_decl(names) + "\n"
        body += _tile_rows(mode, mats, "N", "ex * N")
        body += _reduce(names) + "\n"
        body += _store(kind, _JOINT[kind], gather, has_bias, has_res)
    return Kernel(
        f"qmv_{kind}_{mode}{'_gather' if gather else ''}_tile",
        inputs,
        outputs,
        body,
        header=HEADER,
    )
