"""Kernel bodies and launches for decode attention (:mod:`zmlx.kernels.attention`).

Split-K ("flash-decoding"): one group per (batch, kv head, block of query heads, chunk of
keys). A group reads its chunk of K and V once for all the query heads that share the kv
head (GQA; MLA shares one latent cache among all heads):

1. scores: each warp takes KU keys at a time; lanes split the head dim, every lane accumulates a
   partial dot product for each of the GP heads, and one butterfly exchange reduces all GP
   partials at once (GP - 1 + log2(32 / GP) shuffles instead of 5 GP), leaving head
   ``lane / (32 / GP)``'s score in that lane; scores go to shared memory;
2. softmax over the chunk per head (float32), kept as ``(max, sum)``;
3. P V: each thread owns value dims and accumulates all GP heads (V read once).

With one chunk the group normalises (with the attention sink, if any) and writes the output;
otherwise it writes float32 partials and :data:`COMBINE` merges them (or, with
:data:`FUSED_COMBINE` on CUDA, the last group of each head block does, in the same launch). K, V, Q and the mask
are read through their strides (``ensure_row_contiguous=False``): a KV cache is a slice of
a larger buffer, and copying it every step would cost more than the attention.
"""

from __future__ import annotations

import math

import mlx.core as mx

from ..core.backend import backend
from ..core.kernel import Kernel, scalar
from ._common import flag_handoff, vector

# Split so the groups fill the GPU (an H100 has 132 SMs). Qwen3-30B-A3B has 4 kv heads: over
# compile_decode's 512-key buffer, chunks of at least 64 keys gave 32 groups and 20 us a layer;
# chunks of 16 give 128 groups and 7.9 us, plus the combine launch
# (kernel_profile_attention_qwen3_h100.json, kernel_profile_attention_split_qwen3_h100.json).
# One chunk (no combine launch) only where the heads alone give SINGLE_CHUNK_GROUPS groups, or
# the keys fit one MIN_CHUNK. Not measured on Metal, whose GPUs have fewer cores.
TARGET_GROUPS = 512
SINGLE_CHUNK_KEYS = 256  # up to this many keys, one chunk when there are groups enough
SINGLE_CHUNK_GROUPS = 64
MIN_CHUNK = 16
MAX_CHUNKS = 1024
SHARED_BYTES = 30 * 1024  # under Metal's 32 KiB of threadgroup memory

HEADER = r"""
// Reduce GP per-lane partials P[0..GP) over the warp in one butterfly: at each step a lane
// keeps half of its values and adds its partner's copy of that half. Afterwards P[0] in lane l
// holds the total of head l / (32 / GP).
#define ZX_HEADS_REDUCE(P)                                                    \
  {                                                                           \
    int m_ = 16;                                                              \
    for (int h_ = GP / 2; h_ >= 1; h_ >>= 1, m_ >>= 1) {                      \
      const bool up_ = (lane & (uint)m_) != 0u;                               \
      for (int i_ = 0; i_ < h_; ++i_) {                                       \
        const float send_ = up_ ? P[i_] : P[i_ + h_];                         \
        const float keep_ = up_ ? P[i_ + h_] : P[i_];                         \
        P[i_] = keep_ + zx_shfl_xor(send_, m_);                               \
      }                                                                       \
    }                                                                         \
    for (; m_ >= 1; m_ >>= 1) { P[0] += zx_shfl_xor(P[0], m_); }              \
  }
"""

PARTIAL_BODY = r"""
  const int S = ip[0];
  const int s0 = ip[1];
  const int NC = ip[2];
  const int HQ = ip[3];
  const int HKV = ip[4];
  const int NHB = ip[5];
  const float scale = fp[0];
  const int chunk = (int)gid;
  const int hb = (int)gid_y % NHB;
  const int kvh = ((int)gid_y / NHB) % HKV;
  const int b = (int)gid_y / (NHB * HKV);
  const int c0 = s0 + chunk * C;
  const int nk = (c0 + C < S ? c0 + C : S) - c0;
  const int h0 = kvh * G + hb * HB;
  const int nwarps = (int)(lsize / 32u);
  ZX_SHARED float sc[GP * C];
  ZX_SHARED float sm[GP];
  ZX_SHARED float sl[GP];
  ZX_SHARED float qs[QSH ? GP * NQ * 32 : 1];
  float qr[QSH ? 1 : GP * NQ];
  // q (pre-scaled, float32); MLA's rope part is scaled and rounded as mlx-lm's q_pe * scale.
  for (int gi = QSH ? (int)warp : 0; gi < GP * NQ; gi += QSH ? nwarps : 1) {
    const int g = gi / NQ;
    const int i = gi % NQ;
    float v = 0.0f;
    if (g < HB && hb * HB + g < G) {
      const long hq = h0 + g;
      if (i < NM) {
        v = static_cast<float>(q[b * ZX_STRIDES(q)[0] + hq * ZX_STRIDES(q)[1]
                                 + (i * 32 + (int)lane) * ZX_STRIDES(q)[3]]) * scale;
      } else if (NP > 0 && (DP % 32 == 0 || (i - NM) * 32 + (int)lane < DP)) {
        v = zx_rnd<O>(static_cast<float>(qpe[b * ZX_STRIDES(qpe)[0] + hq * ZX_STRIDES(qpe)[1]
                                + ((i - NM) * 32 + (int)lane) * ZX_STRIDES(qpe)[3]]) * scale);
      }
    }
    if (QSH) {
      qs[gi * 32 + (int)lane] = v;
    } else {
      qr[QSH ? 0 : gi] = v;
    }
  }
  if (QSH) { zx_barrier(); }
#define QV(g, i) (QSH ? qs[((g) * NQ + (i)) * 32 + (int)lane] : qr[QSH ? 0 : (g) * NQ + (i)])
  // 1. scores of this chunk's keys, for GP heads
  const long ksb = ZX_STRIDES(kk)[0], ksh = ZX_STRIDES(kk)[1], kss = ZX_STRIDES(kk)[2];
  const long ksd = ZX_STRIDES(kk)[3];
  // KU keys per warp step: their loads are all issued before the first reduction.
  for (int cb = (int)warp * KU; cb < nk; cb += nwarps * KU) {
    float kreg[KU * NM];
    for (int u = 0; u < KU; ++u) {
      const long kb = b * ksb + kvh * ksh + (long)(c0 + cb + u) * kss;
      for (int i = 0; i < NM; ++i) {
        kreg[u * NM + i] = (cb + u < nk) ? static_cast<float>(kk[kb + (i * 32 + (int)lane) * ksd]) : 0.0f;
      }
    }
    for (int u = 0; u < KU; ++u) {
      const int c = cb + u;
      const long s = c0 + c;
      float part[GP];
      float ppart[GP];
      for (int g = 0; g < GP; ++g) { part[g] = 0.0f; ppart[g] = 0.0f; }
      for (int i = 0; i < NM; ++i) {
        for (int g = 0; g < GP; ++g) { part[g] += QV(g, i) * kreg[u * NM + i]; }
      }
      ZX_HEADS_REDUCE(part)
      float sv = part[0];
      if (NP > 0) {  // MLA: mlx-lm rounds the rope scores (q_pe * scale) @ k_pe^T to the dtype
        const long pb = b * ZX_STRIDES(kpe)[0] + kvh * ZX_STRIDES(kpe)[1] + s * ZX_STRIDES(kpe)[2];
        for (int i = 0; i < NP; ++i) {
          const bool in = c < nk && (DP % 32 == 0 || i * 32 + (int)lane < DP);
          const float kv = in ? static_cast<float>(kpe[pb + (i * 32 + (int)lane) * ZX_STRIDES(kpe)[3]]) : 0.0f;
          for (int g = 0; g < GP; ++g) { ppart[g] += QV(g, NM + i) * kv; }
        }
        ZX_HEADS_REDUCE(ppart)
        sv += zx_rnd<O>(ppart[0]);
      }
      const int gl = (int)lane / (32 / GP);
      if (MASK != 0 && c < nk && gl < HB && hb * HB + gl < G) {
        const float mv = static_cast<float>(mask[b * ZX_STRIDES(mask)[0]
            + (long)(h0 + gl) * ZX_STRIDES(mask)[1] + s * ZX_STRIDES(mask)[3]]);
        if (MASK == 1) { sv += mv; }
        else if (mv == 0.0f) { sv = -3.4028234663852886e38f; }  // SDPA's finfo.min
      }
      if (c < nk && (int)lane % (32 / GP) == 0) { sc[gl * C + c] = sv; }
    }
  }
#undef QV
  zx_barrier();
  // 2. softmax over the chunk per head: p = exp(s - m) in place, (m, l) in shared memory
  for (int g = (int)warp; g < GP; g += nwarps) {
    float m = ZX_NEG_INF;
    for (int c = (int)lane; c < nk; c += 32) { m = zx_max(m, sc[g * C + c]); }
    m = zx_warp_max(m);
    const float mref = (m == ZX_NEG_INF) ? 0.0f : m;  // a fully masked chunk adds nothing
    float l = 0.0f;
    for (int c = (int)lane; c < nk; c += 32) {
      const float p = zx_exp(sc[g * C + c] - mref);
      sc[g * C + c] = p;
      l += p;
    }
    l = zx_warp_sum(l);
    if (lane == 0u) { sm[g] = mref; sl[g] = l; }
  }
  zx_barrier();
  // 3. P V: this thread's value dims, for every head
  float acc[GP * DPT];
  for (int a = 0; a < GP * DPT; ++a) { acc[a] = 0.0f; }
  const long vsb = ZX_STRIDES(vv)[0], vsh = ZX_STRIDES(vv)[1], vss = ZX_STRIDES(vv)[2];
  const long vsd = ZX_STRIDES(vv)[3];
  const long vb = b * vsb + kvh * vsh;
  for (int cb = 0; cb < nk; cb += PVU) {  // PVU value loads in flight per thread
    float xr[PVU * DPT];
    for (int u = 0; u < PVU; ++u) {
      for (int j = 0; j < DPT; ++j) {
        xr[u * DPT + j] = (cb + u < nk)
            ? static_cast<float>(vv[vb + (long)(c0 + cb + u) * vss + (lid + j * NT) * vsd]) : 0.0f;
      }
    }
    for (int u = 0; u < PVU; ++u) {
      if (cb + u >= nk) { break; }
      for (int j = 0; j < DPT; ++j) {
        for (int g = 0; g < GP; ++g) { acc[g * DPT + j] += sc[g * C + cb + u] * xr[u * DPT + j]; }
      }
    }
  }
  for (int g = 0; g < GP; ++g) {
    if (g >= HB || hb * HB + g >= G) { continue; }
    const long orow = (long)b * HQ + h0 + g;
    if (FINAL) {
      float f = 0.0f;
      float denom = sl[g];
      if (SINKS) {  // the sink's logit joins the softmax denominator only
        const float sk = zx_rnd<O>(static_cast<float>(sinks[(h0 + g) * ZX_STRIDES(sinks)[0]]));
        const float mm = zx_max(sm[g], sk);
        f = sm[g] - mm;
        denom = sl[g] * zx_exp(f) + zx_exp(sk - mm);
      }
      const float inv = denom > 0.0f ? zx_exp(f) / denom : 0.0f;
      for (int j = 0; j < DPT; ++j) {
        out[orow * DV + lid + j * NT] = static_cast<O>(acc[g * DPT + j] * inv);
      }
    } else {
      for (int j = 0; j < DPT; ++j) { opart[(orow * NC + chunk) * DV + lid + j * NT] = acc[g * DPT + j]; }
      if (lid == 0u) {
        ml[(orow * NC + chunk) * 2] = sm[g];
        ml[(orow * NC + chunk) * 2 + 1] = sl[g];
      }
    }
  }
"""


def _merge(sink: str, past_l1: bool) -> str:
    """The merge of one output row's chunk partials (``row``; ``wc``, ``red`` in shared memory):
    the chunks' weights by warp 0, then every thread's value dims. ``sink``: the row's sink
    logit; ``past_l1``: read the partials with ``zx_ldcg`` (written by other groups of the same
    launch)."""
    ld, end = ("zx_ldcg(&", ")") if past_l1 else ("", "")
    return (
        r"""
  if (warp == 0u) {  // the chunks' weights: one warp, a chunk per lane at a time
    float M = ZX_NEG_INF;
    for (int c = (int)lane; c < NC; c += 32) { M = zx_max(M, @ml[(row * NC + c) * 2]@); }
    M = zx_warp_max(M);
    float sk = ZX_NEG_INF;
    if (SINKS) { sk = zx_rnd<O>(static_cast<float>(@SINK@)); M = zx_max(M, sk); }
    float L = 0.0f;
    for (int c = (int)lane; c < NC; c += 32) {
      const float w = zx_exp(@ml[(row * NC + c) * 2]@ - M);
      wc[c] = w;
      L += @ml[(row * NC + c) * 2 + 1]@ * w;
    }
    L = zx_warp_sum(L);
    if (SINKS) { L += zx_exp(sk - M); }
    if (lane == 0u) { red[0] = L > 0.0f ? 1.0f / L : 0.0f; }
  }
  zx_barrier();
  const float inv = red[0];
  for (uint d = lid; d < (uint)DV; d += lsize) {
    float o = 0.0f;
    for (int c = 0; c < NC; ++c) { o += @opart[(row * NC + c) * DV + d]@ * wc[c]; }
    out[row * DV + d] = static_cast<O>(o * inv);
  }
"""
        .replace("@SINK@", sink)
        .replace("@ml", ld + "ml").replace("@opart", ld + "opart").replace("]@", "]" + end)
    )  # fmt: skip


COMBINE_BODY = r"""
  const int NC = ip[2];
  const int HQ = ip[3];
  const long row = gid;
  ZX_SHARED float wc[MAXC];
  ZX_SHARED float red[2];
""" + _merge("sinks[row % HQ]", past_l1=False)

# The combine folded into the partial launch (CUDA): each group raises its flag once its
# partials are written (the dialect's zx_flag_* hand-off); the group of a (batch, kv head,
# head block) that sees all its chunks' flags raised merges the partials of its heads, as
# COMBINE_BODY does (same order, so bit for bit the same output), and the separate combine
# launch goes away. The merge then runs on one group per head block rather than one per row.
# Off by default: not yet measured on a GPU.
FUSED_COMBINE = False
FUSED_TAIL = (
    r"""
  ZX_SHARED float wc[MAXC];
  ZX_SHARED float red[2];
"""
    + flag_handoff("flg[gid_y * (uint)NC + {i}]", "NC", "(uint)chunk", block=True)
    + r"""
  for (int g = 0; g < GP; ++g) {
    if (g >= HB || hb * HB + g >= G) { continue; }
    const long row = (long)b * HQ + h0 + g;
"""
    + _merge("sinks[(h0 + g) * ZX_STRIDES(sinks)[0]]", past_l1=True)
    + r"""
    zx_barrier();
  }
"""
)

_PARTIAL_INPUTS = ("q", "kk", "vv", "qpe", "kpe", "mask", "sinks", "ip", "fp")
PARTIAL = Kernel(
    "decode_attention_partial",
    _PARTIAL_INPUTS,
    ("out", "opart", "ml"),
    PARTIAL_BODY,
    header=HEADER,
    ensure_row_contiguous=False,
)
PARTIAL_FUSED = Kernel(
    "decode_attention_partial_fused",
    _PARTIAL_INPUTS,
    ("out", "opart", "ml", "flg"),
    PARTIAL_BODY + FUSED_TAIL,
    header=HEADER,
    ensure_row_contiguous=False,
)
COMBINE = Kernel(
    "decode_attention_combine",
    ("opart", "ml", "sinks", "ip"),
    ("out",),
    COMBINE_BODY,
    header=HEADER,
)


def pow2ceil(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def head_block(g: int, n_q: int, shared_q: bool) -> tuple[int, int]:
    """``(GP, HB)``: padded (power of two) and real query heads per group."""
    gp = min(pow2ceil(g), 32)
    if shared_q:  # q in shared memory: GP * (dims / 32) * 32 floats
        while gp > 1 and gp * n_q * 32 * 4 > SHARED_BYTES * 2 // 3:
            gp //= 2
    return gp, min(g, gp)


def chunking(n_keys: int, base_groups: int, gp: int, q_bytes: int) -> tuple[int, int] | None:
    """``(C, NC)``: keys per chunk (a power of two, for the shared score tile) and chunks."""
    cmax = 512
    while cmax > 32 and gp * cmax * 4 + q_bytes > SHARED_BYTES:
        cmax //= 2
    one = n_keys <= MIN_CHUNK or (
        n_keys <= SINGLE_CHUNK_KEYS and base_groups >= SINGLE_CHUNK_GROUPS
    )
    if one and pow2ceil(n_keys) <= cmax:
        return max(32, pow2ceil(n_keys)), 1
    want = max(1, math.ceil(TARGET_GROUPS / base_groups))
    c = min(max(pow2ceil(math.ceil(n_keys / want)), MIN_CHUNK), cmax)
    nc = math.ceil(n_keys / c)
    return (c, nc) if nc <= MAX_CHUNKS else None


_DUMMY4: dict = {}


def dummy4(dtype=mx.float32) -> mx.array:
    """A cached (1, 1, 1, 1) array for an absent 4-D input (the body reads its strides)."""
    a = _DUMMY4.get(dtype)
    if a is None:
        a = _DUMMY4[dtype] = mx.zeros((1, 1, 1, 1), dtype=dtype)
    return a


_STATIC: dict[tuple, tuple] = {}
_TEMPLATES: dict[tuple, list] = {}


def _static(b, hq, hkv, dm, dp, dv, out_dtype, mask_mode, has_sinks) -> tuple:
    """What does not depend on the cache length, computed once per configuration."""
    key = (b, hq, hkv, dm, dp, dv, out_dtype, mask_mode, has_sinks)
    hit = _STATIC.get(key)
    if hit is None:
        g = hq // hkv
        np_ = -(-dp // 32)  # rounds of 32 lanes over the rope part (the last maybe partial)
        nq = dm // 32 + np_
        shared_q = min(pow2ceil(g), 32) * nq > 64  # more q values per lane than registers hold
        gp, hb = head_block(g, nq, shared_q)
        nhb = math.ceil(g / hb)
        nt = min(max(dv, 64), 256)
        template = [
            ("G", g), ("GP", gp), ("HB", hb), ("NM", dm // 32), ("NP", np_), ("DP", dp), ("NQ", nq),
            ("QSH", shared_q), ("NT", nt), ("DPT", dv // nt), ("DV", dv), ("MASK", mask_mode),
            ("SINKS", has_sinks), ("O", out_dtype),
        ]  # fmt: skip
        combine = [("DV", dv), ("MAXC", MAX_CHUNKS), ("SINKS", has_sinks), ("O", out_dtype)]
        template += [("KU", max(1, min(4, 16 // (dm // 32)))), ("PVU", 8 if dv // nt == 1 else 4)]
        hit = (key, gp, nhb, nt, gp * nq * 32 * 4 if shared_q else 0, template, combine)
        _STATIC[key] = hit
    return hit


def launch(q, kk, vv, qpe, kpe, mask, sinks, scale, *, b, hq, hkv, s, s0, dm, dp, dv, out_dtype,
           mask_mode):  # fmt: skip
    """Launch the partial kernel (and the combine kernel when the keys span several chunks;
    with :data:`FUSED_COMBINE` on CUDA the partial launch merges them itself).

    Returns the output ``(b, hq, 1, dv)``, or None when the shape is not covered.
    """
    key, gp, nhb, nt, q_bytes, base, combine = _static(
        b, hq, hkv, dm, dp, dv, out_dtype, mask_mode, sinks is not None
    )
    ch = chunking(s - s0, b * hkv * nhb, gp, q_bytes)
    if ch is None:
        return None
    c, nc = ch
    final = nc == 1
    template = _TEMPLATES.get((key, c, final))
    if template is None:
        template = _TEMPLATES[(key, c, final)] = base + [("C", c), ("FINAL", final)]
    ip = vector((s, s0, nc, hq, hkv, nhb), mx.int32)
    rows = b * hq
    ins = [
        q, kk, vv,
        qpe if qpe is not None else dummy4(),
        kpe if kpe is not None else dummy4(),
        mask if mask is not None else dummy4(),
        sinks if sinks is not None else scalar(0.0),
        ip, vector((float(scale),), mx.float32),
    ]  # fmt: skip
    if not final and FUSED_COMBINE and backend() == "cuda":
        return PARTIAL_FUSED(
            *ins,
            output_shapes=[(b, hq, 1, dv), (rows, nc, dv), (rows, nc, 2), (b * hkv * nhb, nc)],
            output_dtypes=[out_dtype, mx.float32, mx.float32, mx.uint32],
            grid=(nc * nt, b * hkv * nhb, 1),
            threadgroup=(nt, 1, 1),
            template=template + [("MAXC", MAX_CHUNKS)],
        )[0]  # fmt: skip
    out, opart, ml = PARTIAL(
        *ins,
        output_shapes=[(b, hq, 1, dv) if final else (1,), (rows, nc, dv) if not final else (1,),
                       (rows, nc, 2) if not final else (1,)],
        output_dtypes=[out_dtype, mx.float32, mx.float32],
        grid=(nc * nt, b * hkv * nhb, 1),
        threadgroup=(nt, 1, 1),
        template=template,
    )  # fmt: skip
    if final:
        return out
    (out,) = COMBINE(
        opart, ml,
        sinks if sinks is not None else scalar(0.0),
        ip,
        output_shapes=[(b, hq, 1, dv)],
        output_dtypes=[out_dtype],
        grid=(rows * 128, 1, 1),
        threadgroup=(128, 1, 1),
        template=combine,
    )  # fmt: skip
    return out
