"""Kernel bodies and launches for the MoE routers in :mod:`zmlx.kernels.routers`.

One body covers every routing rule (softmax -> top-k, top-k -> softmax, sigmoid/softmax +
selection bias with group-limited top-k); compile-time constants pick the steps, so each
model's configuration compiles once. A warp routes one token: lane ``l`` holds experts
``l, l + 32, ...`` (at most 16 each, so ``E <= 512``) in registers, and top-k is ``k`` rounds
of a warp argmax. Ties and order follow the family's mlx-lm expression on MLX's GPU (a stable
sort, see ``RouterRule.ascending``): descending score with ties to the lower index, or, for
``ASC``, ties to the higher index and the picks written in ascending order.

Where mlx-lm computes in the activation dtype (bfloat16 softmax output, renormalisation,
scaling), the kernel rounds to that dtype at the same points (``zx_rnd<S>``), so its weights
match mlx-lm's rounding rather than a float32 re-derivation.
"""

from __future__ import annotations

import functools
import math

import mlx.core as mx

from ..core.kernel import Kernel, scalar
from ._common import flag_handoff, vector

MAX_EXPERTS = 512  # 16 experts per lane in registers
MAX_K = 32  # lane i keeps the i-th pick
MAX_GROUPS = 32  # kept groups are a 32-bit mask
FUSED_MAX_TOKENS = 16
FUSED_MAX_DIM = 7168  # x row in shared memory: 28 KiB + logits, under Metal's 32 KiB
# One group per token. 512 threads leave room for up to 128 registers a thread (NVRTC's ptxas
# gives the largest configuration, E = 512 with 32 groups, 80); 1024 would fail to launch above 64.
FUSED_THREADS = 512
# Words each lane of the fused router loads before using them (its memory-level parallelism:
# the one group per token walks E / (FUSED_THREADS / 32) experts per warp, D / (32 * WU)
# rounds to memory each). 16 took a chained Qwen3 MoE block from 107 to 100 us on an H100
# (launch_cost_moe_chain_h100.json), but the one-group router is slow either way (25-46 us a
# layer, kernel_profile_qwen3_h100.json): moe_block routes in two launches by default.
FUSED_WU = 8
_ROUTE_WARPS = 4  # tokens per group in the logits -> routing kernel

# The routing core. Before it: `tok` (token), `lane`, and LOGIT(e) reading expert e's logit.
_CORE = r"""
  const float r_eps = prm[0];
  const float r_scale = prm[1];
  float sel[EPL];
  float wsrc[EPL];
  float r_m = ZX_NEG_INF;
  for (int j = 0; j < EPL; ++j) {
    const int e = (int)lane + 32 * j;
    float v = ZX_NEG_INF;
    if (e < E) { v = LOGIT(e); }
    sel[j] = v;
    r_m = zx_max(r_m, v);
  }
  if (SCORE == 1) {  // softmax over all experts in float32, output rounded to S (mx precise)
    r_m = zx_warp_max(r_m);
    float s = 0.0f;
    for (int j = 0; j < EPL; ++j) {
      const float p = ((int)lane + 32 * j < E) ? zx_exp(sel[j] - r_m) : 0.0f;
      sel[j] = p;
      s += p;
    }
    const float inv = 1.0f / zx_warp_sum(s);
    for (int j = 0; j < EPL; ++j) { sel[j] = zx_rnd<S>(sel[j] * inv); }
  } else if (SCORE == 2) {
    for (int j = 0; j < EPL; ++j) { sel[j] = zx_rnd<S>(zx_sigmoid(sel[j])); }
  }
  for (int j = 0; j < EPL; ++j) { wsrc[j] = sel[j]; }
  if (HAS_BIAS) {  // selection-only bias: weights keep the unbiased scores
    for (int j = 0; j < EPL; ++j) {
      const int e = (int)lane + 32 * j;
      if (e < E) {
        float b = static_cast<float>(sbias[e]);
        if (BIAS_CAST) { b = zx_rnd<S>(b); }
        sel[j] = zx_rnd<SD>(sel[j] + b);
      }
    }
  }
  if (GMODE != 0) {  // keep the TG best of NG groups; the others' scores become 0.0
    float gsc[NG];
    for (int g = 0; g < NG; ++g) {
      float a1 = ZX_NEG_INF;
      float a2 = ZX_NEG_INF;
      for (int j = 0; j < EPL; ++j) {
        const int e = (int)lane + 32 * j;
        if (e < E && e / GS == g) {
          const float v = sel[j];
          if (v > a1) { a2 = a1; a1 = v; } else if (v > a2) { a2 = v; }
        }
      }
      for (int mm = 16; mm > 0; mm >>= 1) {  // merge sorted pairs across the warp
        const float b1 = zx_shfl_xor(a1, mm);
        const float b2 = zx_shfl_xor(a2, mm);
        const float hi = zx_max(a1, b1);
        a2 = zx_max(zx_min(a1, b1), zx_max(a2, b2));
        a1 = hi;
      }
      gsc[g] = (GMODE == 1) ? a1 : zx_rnd<SD>(a1 + a2);
    }
    uint keep = 0u;
    for (int g = 0; g < NG; ++g) {
      int rank = 0;
      for (int h = 0; h < NG; ++h) {
        rank += (gsc[h] > gsc[g] || (gsc[h] == gsc[g] && h < g)) ? 1 : 0;
      }
      if (rank < TG) { keep |= (1u << g); }
    }
    for (int j = 0; j < EPL; ++j) {
      const int e = (int)lane + 32 * j;
      if (e < E && ((keep >> (e / GS)) & 1u) == 0u) {
        sel[j] = 0.0f;
        if (MASK_W) { wsrc[j] = 0.0f; }
      }
    }
  }
  // Top-k: K rounds of a warp argmax (larger score first, then the lower index; with ASC the
  // higher index, and pick i goes to slot K - 1 - i).
  const float none = 1048576.0f;
  uint taken = 0u;
  int my_i = 0;
  float my_w = 0.0f;
  for (int i = 0; i < K; ++i) {
    float bv = ZX_NEG_INF;
    float bi = none;
    float bw = 0.0f;
    for (int j = 0; j < EPL; ++j) {
      const int e = (int)lane + 32 * j;
      if (e < E && ((taken >> j) & 1u) == 0u &&
          (bi == none || sel[j] > bv || (ASC && sel[j] == bv))) {
        bv = sel[j];
        bi = (float)e;
        bw = wsrc[j];
      }
    }
    for (int mm = 16; mm > 0; mm >>= 1) {
      const float ov = zx_shfl_xor(bv, mm);
      const float oi = zx_shfl_xor(bi, mm);
      const float ow = zx_shfl_xor(bw, mm);
      if (oi != none && (bi == none || ov > bv || (ov == bv && (ASC ? oi > bi : oi < bi)))) {
        bv = ov;
        bi = oi;
        bw = ow;
      }
    }
    const int win = (int)bi;
    if ((win & 31) == (int)lane) { taken |= (1u << (win >> 5)); }
    if ((int)lane == (ASC ? K - 1 - i : i)) { my_i = win; my_w = bw; }
  }
  const bool act = (int)lane < K;
  float wt = my_w;
  if (POST == 1) {  // softmax over the k picked logits, float32 (mx precise)
    const float m2 = zx_warp_max(act ? wt : ZX_NEG_INF);
    const float ex = act ? zx_exp(wt - m2) : 0.0f;
    wt = ex * (1.0f / zx_warp_sum(ex));
  } else {
    if (NORM) {
      float s = zx_rnd<S>(zx_warp_sum(act ? wt : 0.0f));
      s = zx_rnd<S>(s + zx_rnd<S>(r_eps));
      wt = zx_rnd<S>(wt / s);
    }
    wt = zx_rnd<S>(wt * zx_rnd<S>(r_scale));
  }
  if (act) {
    inds[tok * K + lane] = static_cast<uint32_t>(my_i);
    weights[tok * K + lane] = static_cast<O>(wt);
  }
"""

ROUTE_BODY = (
    r"""
  const uint tok = gid * (lsize / 32u) + warp;
  if (tok >= dims[0]) { return; }
#define LOGIT(e) static_cast<float>(logits[tok * E + (e)])
"""
    + _CORE
    + "#undef LOGIT\n"
)

# One group per token: the router matvec into shared memory, then warp 0 routes.
_FUSED_HEAD = r"""
  const uint tok = gid;
  if (tok >= dims[0]) { return; }
  ZX_SHARED float xs[DIN];
  ZX_SHARED float lg[E];
@LOAD@  zx_barrier();
  const int nw = (int)(lsize / 32u);
  const int r_sl = 0;  // a warp takes whole rows
  const int r_nsl = 1;
  for (int e = (int)warp; e < E; e += nw) {
    float acc = 0.0f;
"""
# Each lane issues WU loads before using any (memory-level parallelism: one group per token
# streams the whole router matrix through one SM).
# The affine row slice's constants (before the dot, or before x where the words are preloaded).
_AFFINE_CONSTS = r"""
    const int vpw = 32 / QBITS;
    const int wpr = DIN / vpw;
    const int ngr = DIN / GSZ;
    const uint qmask = (1u << QBITS) - 1u;
    const int r_len = (wpr + r_nsl - 1) / r_nsl;  // this warp's slice of the row's words
    const int r_lo = r_sl * r_len;
    const int r_hi = zx_imin(wpr, r_lo + r_len);
"""
# One round's math: WU words of the lane's slice (words, wsc, wbi) against xs.
_AFFINE_MATH = r"""
      for (int u = 0; u < WU; ++u) {
        const int i = i0 + 32 * u;
        if (i < r_hi) {
          const int k0 = i * vpw;
          float dq = 0.0f;
          float xsum = 0.0f;
          for (int t = 0; t < vpw; ++t) {
            const float xv = xs[k0 + t];
            dq += static_cast<float>((words[u] >> (QBITS * t)) & qmask) * xv;
            xsum += xv;
          }
          acc += wsc[u] * dq + wbi[u] * xsum;
        }
      }
"""
# The head of one round of the dot: WU words of the lane's slice, their group g.
_ROUND_HEAD = r"""
    for (int i0 = r_lo + (int)lane; i0 < r_hi; i0 += 32 * WU) {
      uint words[WU];
      float wsc[WU];
      float wbi[WU];
      for (int u = 0; u < WU; ++u) {
        const int i = i0 + 32 * u;
        const int g = (i * vpw) / GSZ;
"""
_DOT_AFFINE = (
    r"""
    // MLX affine quantization: w = scale * q + bias per group of GSZ along the row.
"""
    + _AFFINE_CONSTS[1:]
    + _ROUND_HEAD[1:]
    + r"""        words[u] = (i < r_hi) ? rw[e * wpr + i] : 0u;
        wsc[u] = (i < r_hi) ? static_cast<float>(scales[e * ngr + g]) : 0.0f;
        wbi[u] = (i < r_hi) ? static_cast<float>(qbias[e * ngr + g]) : 0.0f;
      }
"""
    + _AFFINE_MATH[1:]
    + "    }\n"
)
_DOT_FLOAT = r"""
    const int r_len = (DIN + r_nsl - 1) / r_nsl;  // this warp's slice of the row
    const int r_lo = r_sl * r_len;
    const int r_hi = zx_imin(DIN, r_lo + r_len);
    for (int i0 = r_lo + (int)lane; i0 < r_hi; i0 += 32 * WU) {
      float wv[WU];
      for (int u = 0; u < WU; ++u) {
        const int i = i0 + 32 * u;
        wv[u] = (i < r_hi) ? static_cast<float>(rw[e * DIN + i]) : 0.0f;
      }
      for (int u = 0; u < WU; ++u) {
        const int i = i0 + 32 * u;
        if (i < r_hi) { acc += wv[u] * xs[i]; }
      }
    }
"""
_FUSED_TAIL = (
    r"""
    acc = zx_warp_sum(acc);
    if (lane == 0u) {
      float lv = zx_rnd<LG>(acc);
      if (HAS_LBIAS) {  // quantized Linear adds the bias after rounding; addmm rounds once
        lv = zx_rnd<LG>((QBITS > 0 ? lv : acc) + static_cast<float>(lbias[e]));
      }
      lg[e] = lv;
    }
  }
  zx_barrier();
  if (warp != 0u) { return; }
#define LOGIT(e) lg[(e)]
"""
    + _CORE
    + "#undef LOGIT\n"
)

ROUTE = Kernel("moe_route", ("logits", "sbias", "prm", "dims"), ("inds", "weights"), ROUTE_BODY)
_FUSED_INPUTS = ("x", "rw", "scales", "qbias", "lbias", "sbias", "prm", "dims")
# The pre-norm of a decoder layer folded into the x load: h = x + xa rounded to XT (x's dtype),
# then MLX's rms_norm of h (nrmw * XT(h * rsqrt(mean(h^2) + eps)), the product in XT).
_PRENORM_LOAD = r"""
  ZX_SHARED float red[32];
  float ss = 0.0f;
  for (uint i = lid; i < (uint)DIN; i += lsize) {
    const float v = zx_rnd<XT>(static_cast<float>(x[tok * DIN + i]) +
                               static_cast<float>(xa[tok * DIN + i]));
    xs[i] = v;
    ss += v * v;
  }
  ss = zx_warp_sum(ss);
  if (lane == 0u) { red[warp] = ss; }
  zx_barrier();
  float tot = 0.0f;
  for (uint wv = 0; wv < lsize / 32u; ++wv) { tot += red[wv]; }
  const float nrm = zx_rsqrt(tot / (float)DIN + npr[0]);
  for (uint i = lid; i < (uint)DIN; i += lsize) {
    const float y = zx_rnd<XT>(xs[i] * nrm);
    xs[i] = zx_rnd<XT>(static_cast<float>(nrmw[i]) * y);
    @HN_IF@hn[tok * DIN + i] = static_cast<XT>(xs[i]);
  }
"""
_PLAIN_LOAD = (
    "  for (uint i = lid; i < (uint)DIN; i += lsize) "
    "{ xs[i] = static_cast<float>(x[tok * DIN + i]); }\n"
)


# The router split over groups (CUDA): each group of a token computes the logits of
# SPLIT_WARPS / SPLIT_SLICES experts (SPLIT_SLICES warps a row, each a slice of it) and writes
# them out (``lgo``); the group that then sees every group's flag raised (``flg``; the
# dialect's zx_flag_* hand-off) reads all E logits back and routes the token. One launch, and
# the router matrix streams through many SMs rather than one. No state outlives a launch (the
# flags live in an output), so launches that MLX runs concurrently (lazy graphs of several
# steps) never interfere.
SPLIT_WARPS = 8
# Warps a router row (each a slice of it, the slices summed in order): Qwen3-30B-A3B's 128
# experts run as 64 groups of two rows. One warp a row left 770 instructions a warp at 28
# cycles each (18 us under ncu, ncu_sweep_router_h100.json).
SPLIT_SLICES = 4
SPLIT = True  # CUDA routes with the split launch (False: one group a token, as on Metal)
# Quantized split router: each lane issues the loads of its first WU words of its row slice
# (with their scales and biases) before x's load and the folded norm, so their latency overlaps
# that phase rather than following it; the same sums in the same order (bit-identical). Off:
# not yet timed on a GPU.
SPLIT_PRELOAD = False
_SPLIT_HEAD = r"""
  const uint tok = gid_y;
  if (tok >= dims[0]) { return; }
  ZX_SHARED float xs[DIN];
@LOAD@  zx_barrier();
  // WPE warps a row, each a slice of it; lsize / 32 / WPE rows a group.
  ZX_SHARED float r_part[32];
  const int r_nsl = WPE;
  const int r_sl = (int)warp % WPE;
  const int epg = (int)(lsize / 32u) / WPE;
  const int e = (int)gid * epg + (int)warp / WPE;
  float acc = 0.0f;
  if (e < E) {
"""
# The split head with the first round of the row slice's words loaded before x (SPLIT_PRELOAD,
# affine weights): pw/ps/pb feed the first round of _DOT_AFFINE_PRE.
_SPLIT_HEAD_PRE = (
    r"""
  const uint tok = gid_y;
  if (tok >= dims[0]) { return; }
  ZX_SHARED float xs[DIN];
  ZX_SHARED float r_part[32];
  const int r_nsl = WPE;
  const int r_sl = (int)warp % WPE;
  const int epg = (int)(lsize / 32u) / WPE;
  const int e = (int)gid * epg + (int)warp / WPE;
"""
    + _AFFINE_CONSTS[1:]
    + r"""  uint pw[WU];
  float ps[WU];
  float pb[WU];
  for (int u = 0; u < WU; ++u) {
    const int i = r_lo + (int)lane + 32 * u;
    const bool ok = e < E && i < r_hi;
    const int g = ok ? (i * vpw) / GSZ : 0;
    pw[u] = ok ? rw[e * wpr + i] : 0u;
    ps[u] = ok ? static_cast<float>(scales[e * ngr + g]) : 0.0f;
    pb[u] = ok ? static_cast<float>(qbias[e * ngr + g]) : 0.0f;
  }
@LOAD@  zx_barrier();
  float acc = 0.0f;
  if (e < E) {
"""
)
_DOT_AFFINE_PRE = (
    _ROUND_HEAD
    + r"""        const bool first = i0 == r_lo + (int)lane;
        words[u] = first ? pw[u] : (i < r_hi) ? rw[e * wpr + i] : 0u;
        wsc[u] = first ? ps[u] : (i < r_hi) ? static_cast<float>(scales[e * ngr + g]) : 0.0f;
        wbi[u] = first ? pb[u] : (i < r_hi) ? static_cast<float>(qbias[e * ngr + g]) : 0.0f;
      }
"""
    + _AFFINE_MATH[1:]
    + "    }\n"
)
_SPLIT_TAIL = (
    r"""
  }
  acc = zx_warp_sum(acc);
  if (lane == 0u) { r_part[warp] = acc; }
  zx_barrier();
  if ((int)lid < epg && (int)gid * epg + (int)lid < E) {  // the slices summed in order
    const int er = (int)gid * epg + (int)lid;
    float a = 0.0f;
    for (int sl = 0; sl < WPE; ++sl) { a += r_part[(int)lid * WPE + sl]; }
    float lv = zx_rnd<LG>(a);
    if (HAS_LBIAS) {
      lv = zx_rnd<LG>((QBITS > 0 ? lv : a) + static_cast<float>(lbias[er]));
    }
    lgo[tok * E + er] = lv;
  }
"""
    # The hand-off (the dialect's zx_flag_*): the group that sees every group's logits routes.
    + flag_handoff("flg[tok * ngroups + {i}]", "ngroups", "gid", block=False)
    + r"""#define LOGIT(e) zx_ldcg(&lgo[tok * E + (e)])
"""
    + _CORE
    + "#undef LOGIT\n"
)


@functools.cache
def split_kernel(quant: bool, norm: bool = False, preload: bool = False) -> Kernel:
    """The router matvec split over ``ceil(E * SPLIT_SLICES / SPLIT_WARPS)`` groups a token,
    the group that finishes it routing (CUDA; see :data:`SPLIT_WARPS`). Inputs and outputs as
    :func:`fused_kernel`, plus the logits ``lgo`` (float32) and the groups' flags ``flg``.
    ``preload`` (quantized weights; :data:`SPLIT_PRELOAD`): the first round of each lane's
    words is loaded before x."""
    load = (_PRENORM_LOAD if norm else _PLAIN_LOAD).replace("@HN_IF@", "if (gid == 0u) ")
    pre = preload and quant
    head = (_SPLIT_HEAD_PRE if pre else _SPLIT_HEAD).replace("@LOAD@", load)
    dot = _DOT_AFFINE_PRE if pre else _DOT_AFFINE if quant else _DOT_FLOAT
    return Kernel(
        "moe_route_split" + ("_affine" if quant else "") + ("_prenorm" if norm else "")
        + ("_preload" if pre else ""),
        _FUSED_INPUTS[:-1] + (("xa", "nrmw", "npr") if norm else ()) + _FUSED_INPUTS[-1:],
        (("inds", "weights", "hn") if norm else ("inds", "weights")) + ("lgo", "flg"),
        head + dot + _SPLIT_TAIL,
    )  # fmt: skip


@functools.cache
def fused_kernel(quant: bool, norm: bool = False) -> Kernel:
    """The router matvec + routing kernel; float and affine-quantized weights differ only in
    the dot product. ``norm``: x is the residual stream, routed on its folded pre-norm
    (inputs ``xa``, ``nrmw``, ``npr``; template ``XT``), which is also written out (``hn``)
    for the kernels after the router."""
    load = (_PRENORM_LOAD if norm else _PLAIN_LOAD).replace("@HN_IF@", "")
    head = _FUSED_HEAD.replace("@LOAD@", load)
    return Kernel(
        "moe_route_fused" + ("_affine" if quant else "") + ("_prenorm" if norm else ""),
        _FUSED_INPUTS[:-1] + (("xa", "nrmw", "npr") if norm else ()) + _FUSED_INPUTS[-1:],
        ("inds", "weights", "hn") if norm else ("inds", "weights"),
        head + (_DOT_AFFINE if quant else _DOT_FLOAT) + _FUSED_TAIL,
    )


def params(eps: float, scale: float) -> mx.array:
    """A cached float32 ``[eps, scale]`` (runtime values, so no recompile per value)."""
    return vector((eps, scale), mx.float32)


def dummy() -> mx.array:
    return scalar(0.0, mx.float32)


def route_template(plan, n_experts: int) -> list:
    """Template constants for one routing configuration (``plan`` from ``routers``)."""
    ng = plan.n_group
    return [
        ("E", n_experts),
        ("EPL", math.ceil(n_experts / 32)),
        ("K", plan.k),
        ("SCORE", plan.score_code),
        ("POST", plan.post_code),
        ("GMODE", plan.gmode),
        ("NG", ng),
        ("TG", plan.topk_group),
        ("GS", n_experts // ng),
        ("MASK_W", plan.mask_w),
        ("HAS_BIAS", plan.has_bias),
        ("BIAS_CAST", plan.bias_cast),
        ("NORM", plan.norm),
        ("S", plan.score_dtype),
        ("SD", plan.select_dtype),
        ("O", plan.out_dtype),
        ("ASC", plan.ascending),
    ]


def launch_route(logits: mx.array, sbias, plan, template, t: int) -> tuple[mx.array, mx.array]:
    """Route ``t`` tokens of logits (``(..., E)``, read row-contiguous): one warp per token."""
    wpg = min(_ROUTE_WARPS, t)
    n_groups = math.ceil(t / wpg)
    inds, weights = ROUTE(
        logits,
        sbias if sbias is not None else dummy(),
        params(plan.norm_eps, plan.scale),
        scalar(t, mx.uint32),
        output_shapes=[(t, plan.k), (t, plan.k)],
        output_dtypes=[mx.uint32, plan.out_dtype],
        grid=(n_groups * 32 * wpg, 1, 1),
        threadgroup=(32 * wpg, 1, 1),
        template=template,
    )
    return inds, weights


def launch_fused(x, w, scales, qbias, lbias, sbias, plan, template, logits_dtype, bits, gsz, t, d,
                 prenorm=None, split=False):  # fmt: skip
    """Router matvec + routing for ``t`` tokens of ``d`` features: one group per token, or with
    ``split`` several groups per token (:func:`split_kernel`). ``prenorm``:
    ``(xa, nw, eps)`` routes ``rms_norm(x + xa, nw, eps)`` instead of x, and returns it third
    (``(t, d)`` in x's dtype)."""
    extra = [
        ("DIN", d),
        ("QBITS", bits),
        ("GSZ", gsz),
        ("HAS_LBIAS", lbias is not None),
        ("WU", FUSED_WU),
        ("LG", logits_dtype),
    ]
    z = dummy()
    if split:
        kernel = split_kernel(bits > 0, prenorm is not None, SPLIT_PRELOAD)
    else:
        kernel = fused_kernel(bits > 0, prenorm is not None)
    norm_in = []
    if prenorm is not None:
        xa, nw, eps = prenorm
        norm_in = [xa, nw, scalar(float(eps), mx.float32)]
        extra.append(("XT", x.dtype))
    shapes, dtypes = [(t, plan.k), (t, plan.k)], [mx.uint32, plan.out_dtype]
    if prenorm is not None:
        shapes.append((t, d))
        dtypes.append(x.dtype)
    grid, group = (t * FUSED_THREADS, 1, 1), (FUSED_THREADS, 1, 1)
    if split:
        if not 1 <= SPLIT_WARPS <= 32 or SPLIT_WARPS % SPLIT_SLICES:
            raise ValueError(f"[router_fused] expected SPLIT_WARPS (at most 32) a multiple of "
                             f"SPLIT_SLICES, got {SPLIT_WARPS} and {SPLIT_SLICES}")  # fmt: skip
        n_exp = w.shape[0]  # the router's rows: one per expert
        n_groups = math.ceil(n_exp / (SPLIT_WARPS // SPLIT_SLICES))
        extra.append(("WPE", SPLIT_SLICES))
        shapes += [(t, n_exp), (t, n_groups)]
        dtypes += [mx.float32, mx.uint32]
        grid = (n_groups * 32 * SPLIT_WARPS, t, 1)
        group = (32 * SPLIT_WARPS, 1, 1)
    outs = kernel(
        x,
        w,
        scales if scales is not None else z,
        qbias if qbias is not None else z,
        lbias if lbias is not None else z,
        sbias if sbias is not None else z,
        params(plan.norm_eps, plan.scale),
        *norm_in,
        scalar(t, mx.uint32),
        output_shapes=shapes,
        output_dtypes=dtypes,
        grid=grid,
        threadgroup=group,
        template=template + extra,
    )
    return tuple(outs[:-2] if split else outs)
