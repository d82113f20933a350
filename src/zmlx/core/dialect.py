"""The portable kernel dialect and its two renderings (CUDA and Metal).

Kernel bodies in zmlx are written once, in a small C++ subset that both NVRTC and the Metal
compiler accept, plus a few portable names. A frozen :class:`Dialect` table per backend supplies
the prelude (helpers, macros) and the spellings that differ. Nothing else in zmlx branches on
the backend when it writes a kernel.

Portable names a body may use (declared on demand, only when the body mentions them):

===============  ===========================================================================
``tid``          global thread index along x (``uint``)
``lid``          thread index inside its group along x; ``lid_y`` along y
``gid``          group (CUDA block, Metal threadgroup) index along x; ``gid_y``, ``gid_z``
``lsize``        threads per group along x; ``lsize_y`` along y
``ngroups``      number of groups along x
``lane``         lane inside the warp / SIMD group (0..31)
``warp``         warp / SIMD-group index inside the group
===============  ===========================================================================

Qualifiers and helpers (defined in every prelude): ``ZX_SHARED`` (declares shared / threadgroup
memory), ``ZX_SHARED_PTR`` (qualifies a pointer to it in a helper's parameters), ``ZX_DEVICE`` (pointer into global memory in a helper's parameters),
``ZX_INLINE`` (helper functions), ``zx_barrier()``, ``zx_shfl_xor(v, mask)``,
``zx_shfl(v, src)``, ``zx_as_float(uint)`` / ``zx_as_uint(float)`` (bit casts),
``zx_ld4(p, al)`` (four ``uint`` words at ``p`` as a ``zx_u4`` with fields ``x, y, z, w``: one
16-byte load on CUDA when ``al``, which a kernel computes once as ``zx_al16(base)``),
``zx_ld2(p)`` (CUDA only: two ``uint`` words at an 8-byte aligned ``p`` as a ``zx_u2`` with
fields ``x, y``, in one 8-byte load),
``zx_mul_rn(a, b)`` (a product never fused into an fma, for exact rounding),
``zx_atomic_add(&out[i], v)`` (atomic add of a float into a float32 output, or of an int into an
int32 output; the kernel must be built with ``atomic_outputs=True``, which Metal needs and CUDA
ignores),
``zx_bf16x2_sub(a, b)`` (CUDA only: packed bfloat16 pairs subtracted lane by lane),
``zx_mma_bf16(d, a, b, c)`` (CUDA only: a warp's 16x16 by 16x8 bfloat16 tile product on the
tensor cores, float32 accumulators, in PTX's mma.m16n8k16 fragments; the emulator computes it
for the warp in float32),
``zx_fence()``, ``zx_flag_raise/zx_flag_up/zx_flag_lower(&flags[i])``, ``zx_ldcg(&p[i])``
(CUDA only: the hand-off of a kernel whose groups finish one result together, the group that
sees every group's flag finishing it; :func:`zmlx.kernels._common.flag_handoff` writes it),
``zx_ticket(&c[i])``, ``zx_wait_count(&c[i], n)``, ``zx_counter_reset(&c[i])`` (CUDA only:
groups that take tickets in the order they start, so a group waits only for groups already
running; :func:`zmlx.kernels.fused_experts.fused_experts_kernel` uses them),
``zx_prefetch_l2(p)`` (CUDA only: a hint that brings the line holding ``p`` into L2),
``zx_warp_sum/max/min(v)``, ``zx_block_sum/max/min(v, buf)`` (``buf``: 32 shared floats; all
threads get the result), math ``zx_exp, zx_log, zx_log2, zx_log1p, zx_expm1, zx_sqrt,
zx_rsqrt, zx_abs, zx_sign, zx_sin, zx_cos, zx_tan, zx_tanh, zx_sigmoid, zx_erf, zx_atan,
zx_sinh, zx_cosh, zx_floor, zx_ceil, zx_pow, zx_max, zx_min, zx_isnan``, ``zx_imin`` (int),
constants ``ZX_INF`` and ``ZX_NEG_INF``, and ``zx_elem_to_loc(i, ZX_SHAPE(x), ZX_STRIDES(x),
ZX_NDIM(x))`` for strided access to input ``x``. The warp size is 32 on both backends.

CUDA launches whole blocks, so a body bounds-checks every access; Metal's ``dispatchThreads``
launches exactly ``grid`` threads. zmlx always launches a multiple of the group size, so both
backends see the same threads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A ``ZX_SHARED`` array declaration: (type, name, dimensions). The kernel search counts their
# bytes; the emulator poisons them at the start of every group.
SHARED_DECL = re.compile(
    r"\bZX_SHARED\s+([A-Za-z_][\w:<>]*)\s+([A-Za-z_]\w*)\s*((?:\[[^\]]*\]\s*)+)"
)

_COMMON_MATH = r"""
// v rounded to the dtype S and back: where a stock op would store S, a kernel rounds the same.
template <typename S> ZX_INLINE float zx_rnd(float v) { return static_cast<float>(static_cast<S>(v)); }
ZX_INLINE float zx_sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }
ZX_INLINE float zx_max(float a, float b) { return (a > b || zx_isnan(a)) ? a : b; }
ZX_INLINE float zx_min(float a, float b) { return (a < b || zx_isnan(a)) ? a : b; }
ZX_INLINE int zx_imin(int a, int b) { return a < b ? a : b; }
ZX_INLINE float zx_sigmoid(float x) {
  // The two-branch form never overflows: exp only sees non-positive arguments.
  if (x >= 0.0f) { return 1.0f / (1.0f + zx_exp(-x)); }
  float e = zx_exp(x);
  return e / (1.0f + e);
}
ZX_INLINE float zx_warp_sum(float v) {
  for (int m = 16; m > 0; m >>= 1) { v += zx_shfl_xor(v, m); }
  return v;
}
ZX_INLINE float zx_warp_max(float v) {
  for (int m = 16; m > 0; m >>= 1) { v = zx_max(v, zx_shfl_xor(v, m)); }
  return v;
}
ZX_INLINE float zx_warp_min(float v) {
  for (int m = 16; m > 0; m >>= 1) { v = zx_min(v, zx_shfl_xor(v, m)); }
  return v;
}
// Block-wide reductions for 1-D groups of up to 1024 threads; buf holds 32 shared floats.
// Every thread of the group must call them (they contain barriers); all get the result.
#define ZX_BLOCK_REDUCE(NAME, WARP_OP, IDENTITY)                                   \
  ZX_INLINE float NAME(float v, ZX_SHARED_PTR float* buf, uint lid_, uint lsize_) {\
    v = WARP_OP(v);                                                                \
    uint nw = (lsize_ + 31u) / 32u;                                                \
    if (nw == 1u) { return v; }                                                    \
    zx_barrier();                                                                  \
    if ((lid_ & 31u) == 0u) { buf[lid_ >> 5] = v; }                                \
    zx_barrier();                                                                  \
    float r = (lid_ < nw) ? buf[lid_] : (IDENTITY);                                \
    if (lid_ < 32u) { r = WARP_OP(r); }                                            \
    if (lid_ == 0u) { buf[0] = r; }                                                \
    zx_barrier();                                                                  \
    return buf[0];                                                                 \
  }
ZX_BLOCK_REDUCE(zx_block_sum_impl, zx_warp_sum, 0.0f)
ZX_BLOCK_REDUCE(zx_block_max_impl, zx_warp_max, ZX_NEG_INF)
ZX_BLOCK_REDUCE(zx_block_min_impl, zx_warp_min, ZX_INF)
#define zx_block_sum(v, buf) zx_block_sum_impl((v), (buf), lid, lsize)
#define zx_block_max(v, buf) zx_block_max_impl((v), (buf), lid, lsize)
#define zx_block_min(v, buf) zx_block_min_impl((v), (buf), lid, lsize)
template <typename S, typename St>
ZX_INLINE long zx_elem_to_loc(long idx, S shape, St strides, int ndim) {
  long loc = 0;
  for (int d = ndim - 1; d >= 0; --d) {
    long s = shape[d];
    loc += (idx % s) * strides[d];
    idx /= s;
  }
  return loc;
}
"""

_CUDA_PRELUDE = r"""
typedef unsigned int uint;
#define ZX_INLINE __device__ __forceinline__
#define ZX_SHARED __shared__
#define ZX_SHARED_PTR
#define ZX_DEVICE
#define zx_barrier() __syncthreads()
#define ZX_INF __int_as_float(0x7f800000)
#define ZX_NEG_INF __int_as_float(0xff800000)
ZX_INLINE bool zx_isnan(float x) { return isnan(x); }
ZX_INLINE float zx_shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
ZX_INLINE float zx_shfl(float v, int src) { return __shfl_sync(0xffffffffu, v, src); }
ZX_INLINE float zx_as_float(uint u) { return __uint_as_float(u); }
ZX_INLINE uint zx_as_uint(float f) { return __float_as_uint(f); }
// Four packed words in one 16-byte load when p is 16-byte aligned (al: zx_al16 of the base).
typedef uint4 zx_u4;
ZX_INLINE bool zx_al16(const void* p) { return (reinterpret_cast<size_t>(p) & 15u) == 0u; }
ZX_INLINE zx_u4 zx_ld4(const uint* p, bool al) {
  if (al) { return *reinterpret_cast<const uint4*>(p); }
  return make_uint4(p[0], p[1], p[2], p[3]);
}
// Two packed words in one 8-byte load (p must be 8-byte aligned).
typedef uint2 zx_u2;
ZX_INLINE zx_u2 zx_ld2(const uint* p) { return *reinterpret_cast<const uint2*>(p); }
// A product the compiler may not contract into an fma with a following add (exact rounding).
ZX_INLINE float zx_mul_rn(float a, float b) { return __fmul_rn(a, b); }
ZX_INLINE void zx_atomic_add(float* p, float v) { atomicAdd(p, v); }
ZX_INLINE void zx_atomic_add(int* p, int v) { atomicAdd(p, v); }
// Grid-wide hand-off (CUDA only), for a result that every group of a launch contributes to:
// barrier; one thread fences (publishing the group's writes) and raises the group's flag in an
// output buffer; barrier; reading threads fence, then read every group's flag. A group that
// sees them all raised fences again, reads the others' writes past L1 (zx_ldcg), finishes the
// result and lowers the flags. The fences are sequentially consistent, so some group always
// sees every flag (two may, and write the same result). A finishing group lowers every flag,
// so a buffer MLX hands out again holds none raised by zmlx; a flag is a NaN payload that
// float arithmetic does not produce (other data matches it at odds of 2^-32 a flag).
#define ZX_FLAG 0x7fc05a4du
ZX_INLINE void zx_fence() { __threadfence(); }
ZX_INLINE void zx_flag_raise(uint* p) { atomicExch(p, ZX_FLAG); }
ZX_INLINE bool zx_flag_up(uint* p) { return *reinterpret_cast<volatile uint*>(p) == ZX_FLAG; }
ZX_INLINE void zx_flag_lower(uint* p) { atomicExch(p, 0u); }
ZX_INLINE float zx_ldcg(const float* p) { return __ldcg(p); }
// Groups handing work to later groups of the same launch (CUDA only). zx_ticket takes the next
// number of a counter (atomic; the old value). A group that waits (zx_wait_count: until the
// counter reaches n, then a fence) must only wait for groups that took their tickets before it
// did: those are running, so the wait ends whatever order the GPU starts groups in.
// zx_counter_reset puts a counter back to zero for the next launch.
ZX_INLINE uint zx_ticket(uint* p) { return atomicAdd(p, 1u); }
ZX_INLINE void zx_wait_count(uint* p, uint n) {
  for (uint ns = 32u; *reinterpret_cast<volatile uint*>(p) < n; ns = ns < 512u ? 2u * ns : ns) {
    __nanosleep(ns);
  }
  __threadfence();
}
ZX_INLINE void zx_counter_reset(uint* p) { atomicExch(p, 0u); }
// A hint to bring the 128-byte line holding p into L2 (no register holds anything).
ZX_INLINE void zx_prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" :: "l"(p)); }
// Two packed bfloat16 (the lower index in the low half) less two others, lane by lane,
// rounded to bfloat16 (CUDA only).
ZX_INLINE uint zx_bf16x2_sub(uint a, uint b) {
  __nv_bfloat162 x = *reinterpret_cast<__nv_bfloat162*>(&a);
  const __nv_bfloat162 y = *reinterpret_cast<__nv_bfloat162*>(&b);
  x = __hsub2(x, y);
  return *reinterpret_cast<uint*>(&x);
}
// Warp-wide d = a * b + c on the tensor cores (CUDA only; every lane of the warp calls it):
// a 16x16 bfloat16 tile times a 16x8 one, float32 in and out, in PTX's fragments for
// mma.m16n8k16 (g = lane / 4, t = lane % 4; a register holds two bfloat16, the lower index in
// its low half): a[0] row g, columns 2t and 2t + 1; a[1] row g + 8, same columns; a[2] and
// a[3] the same rows at columns 2t + 8 and 2t + 9; b[0] rows 2t and 2t + 1 of column g, b[1]
// rows 2t + 8 and 2t + 9; c and d: c[0], c[1] row g, columns 2t and 2t + 1; c[2], c[3] row
// g + 8.
ZX_INLINE void zx_mma_bf16(float* d, const uint* a, const uint* b, const float* c) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
               : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                 "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
ZX_INLINE float zx_exp(float x) { return expf(x); }
ZX_INLINE float zx_log(float x) { return logf(x); }
ZX_INLINE float zx_log2(float x) { return log2f(x); }
ZX_INLINE float zx_log1p(float x) { return log1pf(x); }
ZX_INLINE float zx_expm1(float x) { return expm1f(x); }
ZX_INLINE float zx_sqrt(float x) { return sqrtf(x); }
ZX_INLINE float zx_rsqrt(float x) { return rsqrtf(x); }
ZX_INLINE float zx_abs(float x) { return fabsf(x); }
ZX_INLINE float zx_sin(float x) { return sinf(x); }
ZX_INLINE float zx_cos(float x) { return cosf(x); }
ZX_INLINE float zx_tan(float x) { return tanf(x); }
ZX_INLINE float zx_tanh(float x) { return tanhf(x); }
ZX_INLINE float zx_erf(float x) { return erff(x); }
ZX_INLINE float zx_atan(float x) { return atanf(x); }
ZX_INLINE float zx_sinh(float x) { return sinhf(x); }
ZX_INLINE float zx_cosh(float x) { return coshf(x); }
ZX_INLINE float zx_floor(float x) { return floorf(x); }
ZX_INLINE float zx_ceil(float x) { return ceilf(x); }
ZX_INLINE float zx_pow(float a, float b) { return powf(a, b); }
"""

_METAL_PRELUDE = r"""
#define ZX_INLINE inline
#define ZX_SHARED threadgroup
#define ZX_SHARED_PTR threadgroup
#define ZX_DEVICE device
#define zx_barrier() threadgroup_barrier(mem_flags::mem_threadgroup)
#define ZX_INF INFINITY
#define ZX_NEG_INF (-INFINITY)
ZX_INLINE bool zx_isnan(float x) { return isnan(x); }
ZX_INLINE float zx_shfl_xor(float v, int m) { return simd_shuffle_xor(v, ushort(m)); }
ZX_INLINE float zx_shfl(float v, int src) { return simd_shuffle(v, ushort(src)); }
ZX_INLINE float zx_as_float(uint u) { return as_type<float>(u); }
ZX_INLINE uint zx_as_uint(float f) { return as_type<uint>(f); }
// Four packed words (word loads: the alignment of a device pointer is not checked here).
typedef uint4 zx_u4;
ZX_INLINE bool zx_al16(device const void* p) { return false; }
ZX_INLINE zx_u4 zx_ld4(device const uint* p, bool al) { return uint4(p[0], p[1], p[2], p[3]); }
// Metal has no non-contracting multiply intrinsic; its default safe math mode is relied on.
ZX_INLINE float zx_mul_rn(float a, float b) { return a * b; }
// Outputs of a kernel built with atomic_outputs=True are device atomic<float>*; a template,
// so kernels that never call it never name atomic<float>.
template <typename A> ZX_INLINE void zx_atomic_add(device A* p, float v) {
  atomic_fetch_add_explicit(p, v, memory_order_relaxed);
}
template <typename A> ZX_INLINE void zx_atomic_add(device A* p, int v) {
  atomic_fetch_add_explicit(p, v, memory_order_relaxed);
}
ZX_INLINE float zx_exp(float x) { return metal::exp(x); }
ZX_INLINE float zx_log(float x) { return metal::log(x); }
ZX_INLINE float zx_log2(float x) { return metal::log2(x); }
// Metal has no log1p/expm1/erf: the forms below keep full float accuracy near zero.
ZX_INLINE float zx_log1p(float x) {
  float u = 1.0f + x;
  return (u == 1.0f) ? x : metal::log(u) * (x / (u - 1.0f));
}
ZX_INLINE float zx_expm1(float x) {
  if (metal::fabs(x) < 1e-5f) { return x + 0.5f * x * x; }
  float u = metal::exp(x);
  if (u == 1.0f) { return x; }
  float um1 = u - 1.0f;
  if (um1 == -1.0f) { return -1.0f; }
  return um1 * x / metal::log(u);
}
ZX_INLINE float zx_sqrt(float x) { return metal::sqrt(x); }
ZX_INLINE float zx_rsqrt(float x) { return metal::rsqrt(x); }
ZX_INLINE float zx_abs(float x) { return metal::fabs(x); }
ZX_INLINE float zx_sin(float x) { return metal::precise::sin(x); }
ZX_INLINE float zx_cos(float x) { return metal::precise::cos(x); }
ZX_INLINE float zx_tan(float x) { return metal::precise::tan(x); }
ZX_INLINE float zx_tanh(float x) { return metal::precise::tanh(x); }
ZX_INLINE float zx_erf(float x) {
  float a = metal::fabs(x);
  float r;
  if (a < 0.5f) {
    float t = a * a;  // Taylor series: relative error below 1e-9 on [0, 0.5)
    r = a * 1.1283791671f * (1.0f + t * (-1.0f / 3.0f + t * (0.1f + t * (-1.0f / 42.0f
        + t * (1.0f / 216.0f + t * (-1.0f / 1320.0f + t * (1.0f / 9360.0f)))))));
  } else {
    float t = 1.0f / (1.0f + 0.3275911f * a);  // Abramowitz-Stegun 7.1.26
    float p = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f
        + t * (-1.453152027f + t * 1.061405429f))));
    r = 1.0f - p * metal::exp(-a * a);
  }
  return x < 0.0f ? -r : r;
}
ZX_INLINE float zx_atan(float x) { return metal::precise::atan(x); }
ZX_INLINE float zx_sinh(float x) { return metal::precise::sinh(x); }
ZX_INLINE float zx_cosh(float x) { return metal::precise::cosh(x); }
ZX_INLINE float zx_floor(float x) { return metal::floor(x); }
ZX_INLINE float zx_ceil(float x) { return metal::ceil(x); }
ZX_INLINE float zx_pow(float a, float b) { return metal::precise::pow(a, b); }
"""


@dataclass(frozen=True)
class Dialect:
    """How the portable dialect is spelled on one backend.

    Attributes:
        name: ``"cuda"`` or ``"metal"``.
        prelude: helper definitions placed before the kernel's own header.
        indices: declaration of each portable index name, as a C++ expression.
        shape: spelling of ``ZX_SHAPE(x)``; ``{}`` is the input name.
        strides: spelling of ``ZX_STRIDES(x)``.
        ndim: spelling of ``ZX_NDIM(x)``.
    """

    name: str
    prelude: str
    indices: dict[str, str] = field(default_factory=dict)
    shape: str = "{}_shape"
    strides: str = "{}_strides"
    ndim: str = "{}_ndim"


CUDA = Dialect(
    name="cuda",
    prelude=_CUDA_PRELUDE + _COMMON_MATH,
    indices={
        "tid": "blockIdx.x * blockDim.x + threadIdx.x",
        "lid": "threadIdx.x",
        "lid_y": "threadIdx.y",
        "gid": "blockIdx.x",
        "gid_y": "blockIdx.y",
        "gid_z": "blockIdx.z",
        "lsize": "blockDim.x",
        "lsize_y": "blockDim.y",
        "ngroups": "gridDim.x",
        "lane": "threadIdx.x & 31u",
        "warp": "threadIdx.x >> 5",
    },
    shape="{}_shape.data()",
    strides="{}_strides.data()",
    ndim="{}_ndim",
)

METAL = Dialect(
    name="metal",
    prelude=_METAL_PRELUDE + _COMMON_MATH,
    indices={
        "tid": "thread_position_in_grid.x",
        "lid": "thread_position_in_threadgroup.x",
        "lid_y": "thread_position_in_threadgroup.y",
        "gid": "threadgroup_position_in_grid.x",
        "gid_y": "threadgroup_position_in_grid.y",
        "gid_z": "threadgroup_position_in_grid.z",
        "lsize": "threads_per_threadgroup.x",
        "lsize_y": "threads_per_threadgroup.y",
        "ngroups": "threadgroups_per_grid.x",
        "lane": "thread_index_in_simdgroup",
        "warp": "simdgroup_index_in_threadgroup",
    },
)

DIALECTS: dict[str, Dialect] = {"cuda": CUDA, "metal": METAL}

# The block-reduce macros read lid/lsize, so a body that uses them needs those declared.
_IMPLIED = {
    "zx_block_sum": ("lid", "lsize"),
    "zx_block_max": ("lid", "lsize"),
    "zx_block_min": ("lid", "lsize"),
}
_SHAPE_RE = re.compile(r"\bZX_(SHAPE|STRIDES|NDIM)\(\s*(\w+)\s*\)")


def render_body(body: str, dialect: Dialect) -> str:
    """Render a portable kernel body for one backend.

    Args:
        body: the kernel body in the portable dialect.
        dialect: :data:`CUDA` or :data:`METAL`.

    Returns:
        The body with the portable index names it uses declared at its top and the
        shape/stride spellings substituted.
    """

    def shape_sub(m: re.Match) -> str:
        kind, name = m.group(1), m.group(2)
        spelling = {"SHAPE": dialect.shape, "STRIDES": dialect.strides, "NDIM": dialect.ndim}
        return spelling[kind].format(name)

    text = _SHAPE_RE.sub(shape_sub, body)
    used = {n for n in dialect.indices if re.search(rf"\b{n}\b", text)}
    for helper, names in _IMPLIED.items():
        if helper in text:
            used.update(names)
    decls = "".join(
        f"  const uint {n} = {dialect.indices[n]};\n" for n in dialect.indices if n in used
    )
    return decls + text


_CHUNK_START = re.compile(r"^(#define|ZX_INLINE|template|typedef|ZX_BLOCK_REDUCE)\b")
_DEFINES = re.compile(
    r"^#define\s+(\w+)|^ZX_BLOCK_REDUCE\((\w+)|^typedef\s[^;]*?\b(\w+);"
    r"|^(?:template\s*<[^>]*>\s*)?ZX_INLINE\s[^(]*?\b(\w+)\(",
    re.M,
)
_WORD = re.compile(r"\b\w+\b")


def _prelude_chunks(prelude: str) -> tuple[tuple[frozenset[str], str], ...]:
    """The prelude cut into top-level definitions, each with the names it defines. A comment
    goes with the definition below it; indented lines, closing braces and lines after a
    ``template <...>`` or a line continuation belong to the definition above."""
    chunks: list[list[str]] = []
    pending: list[str] = []
    for line in prelude.strip("\n").split("\n"):
        if line.startswith("//"):
            pending.append(line)
            continue
        prev = chunks[-1][-1] if chunks else ""
        joined = prev.endswith("\\") or (prev.startswith("template") and "{" not in prev)
        if _CHUNK_START.match(line) and not joined or not chunks:
            chunks.append(pending + [line])
        else:
            chunks[-1].extend(pending + [line])
        pending = []
    out = []
    for lines in chunks:
        text = "\n".join(lines)
        names = {n for m in _DEFINES.finditer(text) for n in m.groups() if n}
        out.append((frozenset(names), text))
    return tuple(out)


_CHUNKS: dict[str, tuple[tuple[frozenset[str], str], ...]] = {}


def used_prelude(dialect: Dialect, *texts: str) -> str:
    """The part of ``dialect``'s prelude that ``texts`` (a kernel's header and body) need: the
    definitions they name, and those these name in turn, in prelude order. MLX hashes a custom
    kernel's whole source at every launch, so a shorter source is a cheaper launch."""
    chunks = _CHUNKS.get(dialect.name)
    if chunks is None:
        chunks = _CHUNKS[dialect.name] = _prelude_chunks(dialect.prelude)
    wanted = {w for t in texts for w in _WORD.findall(t)}
    keep = [not names for names, _ in chunks]  # a chunk that defines nothing is always kept
    grew = True
    while grew:
        grew = False
        for i, (names, text) in enumerate(chunks):
            if not keep[i] and names & wanted:
                keep[i] = grew = True
                wanted.update(_WORD.findall(text))
    return "\n".join(text for k, (_, text) in zip(keep, chunks) if k) + "\n"


_LINE_COMMENT = re.compile(r"\s*//.*$")


def compact(source: str) -> str:
    """``source`` without comments, blank lines and indentation (for the text MLX gets; a
    line continued with a backslash keeps its comment-free tail). MLX hashes a custom kernel's
    whole source at every launch, so a shorter source is a cheaper launch."""
    out = []
    for line in source.split("\n"):
        if "//" in line and not line.rstrip().endswith("\\"):
            line = _LINE_COMMENT.sub("", line)
        line = line.strip()
        if line:
            out.append(line)
    return "\n".join(out) + "\n"


def render_header(header: str, dialect: Dialect, body: str = "") -> str:
    """The full header for one backend: the part of the dialect prelude that ``header`` and
    ``body`` use (:func:`used_prelude`), then the kernel's own header."""
    return used_prelude(dialect, header, body) + ("\n" + header if header else "")


SHAPE_ARGS = ("shape", "strides", "ndim")


def shape_args(name: str, body: str) -> list[str]:
    """Which of ``<name>_shape``, ``<name>_strides``, ``<name>_ndim`` a rendered body names
    (MLX passes an input's shape arguments only when its source mentions them)."""
    return [k for k in SHAPE_ARGS if f"{name}_{k}" in body]


def template_lines(template, type_name) -> list[str]:
    """Template values as declarations at the top of a body, as MLX writes them for CUDA.

    Args:
        template: ``(name, value)`` pairs (bool, int or dtype).
        type_name: maps a dtype to its C++ spelling on the target.
    """
    lines = []
    for tname, tval in template:
        if isinstance(tval, bool):
            lines.append(f"  constexpr bool {tname} = {'true' if tval else 'false'};")
        elif isinstance(tval, int):
            lines.append(f"  constexpr int {tname} = {tval};")
        else:
            lines.append(f"  using {tname} = {type_name(tval)};")
    return lines
