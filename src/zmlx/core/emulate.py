"""Run portable kernels on the CPU: a small SIMT emulator for the zmlx dialect.

Inside ``with emulate():`` :func:`zmlx.backend` answers ``"cuda"`` (so ops take their kernel
paths) and every :class:`~zmlx.core.kernel.Kernel` launch is rendered for a host dialect,
compiled with the host C++ compiler into a shared library (cached by source hash) and run on
numpy copies of the inputs. Every thread of a group is a fiber (``ucontext``); ``zx_barrier()``
parks a fiber until every thread of its group arrives (a thread that returned before a
barrier the others wait at is reported: that is undefined on GPUs), and warp shuffles exchange
values once all live lanes of the warp have called them. Shared memory (``ZX_SHARED``) is one static
array per kernel, shared by the group being run. Groups run one after another, last to first
(see below).

What this proves: a kernel body computes the right values for every thread and group, with
the group sizes, bounds checks, shared memory and shuffles the GPU would use. As on a GPU,
shared memory starts as garbage in every group (it is filled with NaN bytes), a grid smaller
than the group shrinks the group, kernels that read their strides get a non-contiguous
layout, groups run last to first and threads between two barriers in alternating directions
(so a missing barrier shows). What it does not:
speed, memory coalescing, races between groups (they never overlap here), or backend-specific
code. Divergent shuffles (not all lanes of a warp calling) and barrier deadlocks raise.
Groups run last to first (``ZMLX_EMULATOR_ORDER=forward`` for first to last): a GPU promises
no order, so a kernel that needs first-to-last fails here too.

Limits: slow (a context switch per barrier and shuffle per thread), so use small shapes;
needs a C++17 compiler (``CXX``, default ``c++``) with ``_Float16`` (GCC >= 12, Clang >= 15).

``ZMLX_EMULATOR_GUARD=1`` (Linux and macOS) places every buffer so that it ends at an
inaccessible page: a kernel that reads or writes past the end of an input or output stops the
process with a segmentation fault instead of reading a neighbour's memory, and each launch
names its kernel on stderr first, so the last name printed is the culprit (on a GPU the same
bug is an "illegal memory access" that poisons every later launch).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import hashlib
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import numpy as np

from .backend import force_backend
from .dialect import (
    _COMMON_MATH,
    SHARED_DECL,
    Dialect,
    render_body,
    shape_args,
    template_lines,
)

_RUNTIME = r"""
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ucontext.h>
typedef unsigned int uint;
typedef unsigned short ushort;
// Shared memory starts as garbage on a GPU: each group's ZX_SHARED arrays are filled with 0xFF
// bytes (NaN floats, -1 ints) when its first thread reaches their declaration, so a read
// before any write shows.
static unsigned long zx_group_seq = 0;
static struct { void* p; unsigned long seq; } zx_shared_reg[64];
static int zx_shared_n = 0;
static void zx_poison_shared(void* p, size_t n) {
  int i = 0;
  while (i < zx_shared_n && zx_shared_reg[i].p != p) ++i;
  if (i == zx_shared_n) {
    if (zx_shared_n == 64) return;
    zx_shared_reg[zx_shared_n++].p = p;
  } else if (zx_shared_reg[i].seq == zx_group_seq) {
    return;
  }
  zx_shared_reg[i].seq = zx_group_seq;
  std::memset(p, 0xFF, n);
}
struct zx_bf16 {
  uint16_t bits;
  zx_bf16() = default;
  zx_bf16(float f) {
    uint32_t u; std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) { bits = 0x7fc0; return; }  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    bits = (uint16_t)(u >> 16);
  }
  operator float() const { uint32_t u = (uint32_t)bits << 16; float f; std::memcpy(&f, &u, 4); return f; }
};
typedef _Float16 zx_half;

enum { ZX_RUN = 0, ZX_AT_BARRIER = 1, ZX_AT_SHFL = 2, ZX_DONE = 3 };
struct zx_thread {
  ucontext_t ctx;
  uint lx, ly, lz;
  int state;
  int shfl_kind, shfl_arg;
  float shfl_in, shfl_out;
  const uint* mma_a;  // zx_mma_bf16's fragments (kind 4), valid while the lane waits
  const uint* mma_b;
  const float* mma_c;
  float* mma_d;
};
struct zx_grid_state {
  uint gx, gy, gz;          // group index
  uint bx, by, bz;          // threads per group
  uint nx, ny, nz;          // groups per grid
  zx_thread* threads;
  int n, cur;
  ucontext_t sched;
  int error;
};
static zx_grid_state zx_g;

static inline void zx_yield(int state) {
  zx_thread* t = &zx_g.threads[zx_g.cur];
  t->state = state;
  swapcontext(&t->ctx, &zx_g.sched);
}
static inline void zx_host_barrier() { zx_yield(ZX_AT_BARRIER); }
// zx_mma_bf16 (zx_host_mma): the lane parks like a shuffle (kind 4); the warp's product is computed once
// every live lane of the warp waits (zx_do_mma).
static inline void zx_host_mma(float* d, const uint* a, const uint* b, const float* c) {
  zx_thread* t = &zx_g.threads[zx_g.cur];
  t->mma_a = a; t->mma_b = b; t->mma_c = c; t->mma_d = d;
  t->shfl_kind = 4; t->shfl_arg = 0;
  zx_yield(ZX_AT_SHFL);
}
static inline float zx_host_shfl(float v, int kind, int arg) {
  zx_thread* t = &zx_g.threads[zx_g.cur];
  t->shfl_in = v; t->shfl_kind = kind; t->shfl_arg = arg;
  zx_yield(ZX_AT_SHFL);
  return zx_g.threads[zx_g.cur].shfl_out;
}
"""

_HOST_PRELUDE = r"""
#define ZX_INLINE static inline
#define ZX_SHARED static
#define ZX_SHARED_PTR
#define ZX_DEVICE
#define zx_barrier() zx_host_barrier()
#define ZX_INF INFINITY
#define ZX_NEG_INF (-INFINITY)
ZX_INLINE bool zx_isnan(float x) { return std::isnan(x); }
ZX_INLINE float zx_shfl_xor(float v, int m) { return zx_host_shfl(v, 0, m); }
ZX_INLINE float zx_shfl(float v, int src) { return zx_host_shfl(v, 1, src); }
ZX_INLINE float zx_shfl_up(float v, int d) { return zx_host_shfl(v, 2, d); }
ZX_INLINE float zx_as_float(uint u) { float f; std::memcpy(&f, &u, 4); return f; }
ZX_INLINE uint zx_as_uint(float f) { uint u; std::memcpy(&u, &f, 4); return u; }
struct zx_u4 { uint x, y, z, w; };
ZX_INLINE bool zx_al16(const void* p) { return ((uintptr_t)p & 15u) == 0u; }
ZX_INLINE zx_u4 zx_ld4(const uint* p, bool al) { zx_u4 v; std::memcpy(&v, p, 16); return v; }
struct zx_u2 { uint x, y; };
ZX_INLINE zx_u2 zx_ld2(const uint* p) {
  if (((uintptr_t)p & 7u) != 0u) { zx_g.error = 7; }
  zx_u2 v; std::memcpy(&v, p, 8); return v;
}
ZX_INLINE float zx_mul_rn(float a, float b) { volatile float p = a * b; return p; }
// Threads switch only at barriers and shuffles, and groups run one after another: a plain
// add is atomic here.
ZX_INLINE void zx_atomic_add(float* p, float v) { *p += v; }
ZX_INLINE void zx_atomic_add(int* p, int v) { *p += v; }
ZX_INLINE void zx_fence() {}
#define ZX_FLAG 0x7fc05a4du
ZX_INLINE void zx_flag_raise(uint* p) { *p = ZX_FLAG; }
ZX_INLINE bool zx_flag_up(uint* p) { return *p == ZX_FLAG; }
ZX_INLINE void zx_flag_lower(uint* p) { *p = 0u; }
ZX_INLINE float zx_ldcg(const float* p) { return *p; }
// Groups run one after another: a group that waits for a count not yet reached would wait
// forever on this order, and on a GPU whenever it starts groups in this order (error 6).
ZX_INLINE uint zx_ticket(uint* p) { return (*p)++; }
ZX_INLINE void zx_wait_count(uint* p, uint n) { if (*p < n) zx_g.error = 6; }
ZX_INLINE void zx_counter_reset(uint* p) { *p = 0u; }
ZX_INLINE void zx_prefetch_l2(const void*) {}
ZX_INLINE void zx_mma_bf16(float* d, const uint* a, const uint* b, const float* c) {
  zx_host_mma(d, a, b, c);
}
ZX_INLINE uint zx_bf16x2_sub(uint a, uint b) {
  uint out = 0u;
  for (int h = 0; h < 2; ++h) {
    const uint ua = ((a >> (16 * h)) & 0xFFFFu) << 16, ub = ((b >> (16 * h)) & 0xFFFFu) << 16;
    float fa, fb;
    std::memcpy(&fa, &ua, 4);
    std::memcpy(&fb, &ub, 4);
    zx_bf16 r = (zx_bf16)(fa - fb);
    out |= (uint)r.bits << (16 * h);
  }
  return out;
}
ZX_INLINE float zx_shfl_down(float v, int d) { return zx_host_shfl(v, 3, d); }
ZX_INLINE float zx_exp(float x) { return std::exp(x); }
ZX_INLINE float zx_log(float x) { return std::log(x); }
ZX_INLINE float zx_log2(float x) { return std::log2(x); }
ZX_INLINE float zx_log1p(float x) { return std::log1p(x); }
ZX_INLINE float zx_expm1(float x) { return std::expm1(x); }
ZX_INLINE float zx_sqrt(float x) { return std::sqrt(x); }
ZX_INLINE float zx_rsqrt(float x) { return 1.0f / std::sqrt(x); }
ZX_INLINE float zx_abs(float x) { return std::fabs(x); }
ZX_INLINE float zx_sin(float x) { return std::sin(x); }
ZX_INLINE float zx_cos(float x) { return std::cos(x); }
ZX_INLINE float zx_tan(float x) { return std::tan(x); }
ZX_INLINE float zx_tanh(float x) { return std::tanh(x); }
ZX_INLINE float zx_erf(float x) { return std::erf(x); }
ZX_INLINE float zx_atan(float x) { return std::atan(x); }
ZX_INLINE float zx_sinh(float x) { return std::sinh(x); }
ZX_INLINE float zx_cosh(float x) { return std::cosh(x); }
ZX_INLINE float zx_floor(float x) { return std::floor(x); }
ZX_INLINE float zx_ceil(float x) { return std::ceil(x); }
ZX_INLINE float zx_pow(float a, float b) { return std::pow(a, b); }
"""

_SCHEDULER = r"""
static int zx_warp_ready(int w) {
  // 1: every live lane of warp w waits in a shuffle; -1: lanes disagree (divergence); 0: not yet
  int base = w * 32, live = 0, at = 0, other = 0;
  for (int i = base; i < base + 32 && i < zx_g.n; ++i) {
    int s = zx_g.threads[i].state;
    if (s == ZX_DONE) continue;
    live++;
    if (s == ZX_AT_SHFL) at++; else if (s == ZX_AT_BARRIER) other++;
  }
  if (at == 0) return 0;
  if (at == live) return 1;
  if (at + other == live) return -1;
  return 0;
}
static inline float zx_bf16_lo(uint v) { uint u = v << 16; float f; std::memcpy(&f, &u, 4); return f; }
static inline float zx_bf16_hi(uint v) { uint u = v & 0xFFFF0000u; float f; std::memcpy(&f, &u, 4); return f; }
static void zx_do_mma(int base) {
  // A 16x16, B 16x8, C 16x8 gathered from the 32 lanes' fragments (see the CUDA dialect).
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    zx_thread* t = &zx_g.threads[base + l];
    const int g = l >> 2, q = l & 3;
    for (int r = 0; r < 4; ++r) {
      const int row = g + ((r & 1) ? 8 : 0), col = 2 * q + ((r & 2) ? 8 : 0);
      A[row][col] = zx_bf16_lo(t->mma_a[r]);
      A[row][col + 1] = zx_bf16_hi(t->mma_a[r]);
    }
    for (int r = 0; r < 2; ++r) {
      B[2 * q + 8 * r][g] = zx_bf16_lo(t->mma_b[r]);
      B[2 * q + 8 * r + 1][g] = zx_bf16_hi(t->mma_b[r]);
    }
    for (int r = 0; r < 4; ++r) C[g + ((r & 2) ? 8 : 0)][2 * q + (r & 1)] = t->mma_c[r];
  }
  for (int l = 0; l < 32; ++l) {
    zx_thread* t = &zx_g.threads[base + l];
    const int g = l >> 2, q = l & 3;
    for (int r = 0; r < 4; ++r) {
      const int row = g + ((r & 2) ? 8 : 0), col = 2 * q + (r & 1);
      float acc = C[row][col];
      for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
      t->mma_d[r] = acc;
    }
  }
}
static void zx_do_shfl(int w) {
  int base = w * 32;
  int mma = 0;
  for (int i = base; i < base + 32 && i < zx_g.n; ++i)
    if (zx_g.threads[i].state == ZX_AT_SHFL && zx_g.threads[i].shfl_kind == 4) mma = 1;
  if (mma) {
    for (int i = base; i < base + 32; ++i) {  // a whole warp, every lane in the mma
      if (i >= zx_g.n || zx_g.threads[i].state != ZX_AT_SHFL || zx_g.threads[i].shfl_kind != 4) {
        zx_g.error = 5;
        for (int j = base; j < base + 32 && j < zx_g.n; ++j)
          if (zx_g.threads[j].state == ZX_AT_SHFL) zx_g.threads[j].state = ZX_RUN;
        return;
      }
    }
    zx_do_mma(base);
    for (int i = base; i < base + 32; ++i) zx_g.threads[i].state = ZX_RUN;
    return;
  }
  for (int i = base; i < base + 32 && i < zx_g.n; ++i) {
    zx_thread* t = &zx_g.threads[i];
    if (t->state != ZX_AT_SHFL) continue;
    int lane = i - base, src;
    switch (t->shfl_kind) {
      case 0: src = lane ^ t->shfl_arg; break;
      case 1: src = t->shfl_arg & 31; break;
      case 2: src = lane - t->shfl_arg; if (src < 0) src = lane; break;
      default: src = lane + t->shfl_arg; if (src > 31) src = lane; break;
    }
    zx_thread* s = &zx_g.threads[base + src];
    if (base + src >= zx_g.n || s->state != ZX_AT_SHFL) { zx_g.error = 2; t->shfl_out = NAN; }
    else t->shfl_out = s->shfl_in;
  }
  for (int i = base; i < base + 32 && i < zx_g.n; ++i)
    if (zx_g.threads[i].state == ZX_AT_SHFL) zx_g.threads[i].state = ZX_RUN;
}
static void zx_run_group(void (*entry)(), char* stacks, size_t stack_size) {
  int n = zx_g.n;
  for (int i = 0; i < n; ++i) {
    zx_thread* t = &zx_g.threads[i];
    t->lx = i % zx_g.bx; t->ly = (i / zx_g.bx) % zx_g.by; t->lz = i / (zx_g.bx * zx_g.by);
    t->state = ZX_RUN;
    t->shfl_kind = 0;
    getcontext(&t->ctx);
    t->ctx.uc_stack.ss_sp = stacks + (size_t)i * stack_size;
    t->ctx.uc_stack.ss_size = stack_size;
    t->ctx.uc_link = &zx_g.sched;
    makecontext(&t->ctx, entry, 0);
  }
  // Between two barriers or shuffles each thread runs alone, in this order: last to first in
  // even groups, first to last in odd ones, so a thread that reads what a neighbour wrote
  // without a barrier (GPU warps do not run in lockstep) sees it unwritten in one of them.
  const int down = ((zx_g.gx + zx_g.gy + zx_g.gz) & 1u) == 0u;
  for (;;) {
    int progressed = 0, live = 0, at_barrier = 0;
    for (int k = 0; k < n; ++k) {
      const int i = down ? n - 1 - k : k;
      zx_thread* t = &zx_g.threads[i];
      if (t->state == ZX_RUN) {
        zx_g.cur = i;
        t->state = ZX_DONE;  // stays DONE if the fiber returns
        swapcontext(&zx_g.sched, &t->ctx);
        progressed = 1;
      }
    }
    for (int w = 0; w * 32 < n; ++w) {
      int r = zx_warp_ready(w);
      if (r == 1) { zx_do_shfl(w); progressed = 1; }
      else if (r == -1) { zx_g.error = 1; return; }
    }
    for (int i = 0; i < n; ++i) {
      int s = zx_g.threads[i].state;
      if (s != ZX_DONE) live++;
      if (s == ZX_AT_BARRIER) at_barrier++;
    }
    if (live == 0) return;
    if (at_barrier > 0 && live < n) { zx_g.error = 4; return; }  // some threads exited instead
    if (at_barrier == live) {
      for (int i = 0; i < n; ++i)
        if (zx_g.threads[i].state == ZX_AT_BARRIER) zx_g.threads[i].state = ZX_RUN;
      continue;
    }
    if (!progressed) { zx_g.error = 3; return; }
  }
}
"""

HOST = Dialect(
    name="host",
    prelude="",
    indices={
        "tid": "zx_g.gx * zx_g.bx + zx_g.threads[zx_g.cur].lx",
        "lid": "zx_g.threads[zx_g.cur].lx",
        "lid_y": "zx_g.threads[zx_g.cur].ly",
        "gid": "zx_g.gx",
        "gid_y": "zx_g.gy",
        "gid_z": "zx_g.gz",
        "lsize": "zx_g.bx",
        "lsize_y": "zx_g.by",
        "ngroups": "zx_g.nx",
        "lane": "(zx_g.threads[zx_g.cur].lx & 31u)",
        "warp": "(zx_g.threads[zx_g.cur].lx >> 5)",
    },
    shape="{}_shape",
    strides="{}_strides",
    ndim="{}_ndim",
)

_TYPES = {
    mx.bool_: ("bool", np.bool_),
    mx.int8: ("int8_t", np.int8),
    mx.int16: ("int16_t", np.int16),
    mx.int32: ("int32_t", np.int32),
    mx.int64: ("int64_t", np.int64),
    mx.uint8: ("uint8_t", np.uint8),
    mx.uint16: ("uint16_t", np.uint16),
    mx.uint32: ("uint32_t", np.uint32),
    mx.uint64: ("uint64_t", np.uint64),
    mx.float16: ("zx_half", np.float16),
    mx.bfloat16: ("zx_bf16", np.uint16),
    mx.float32: ("float", np.float32),
}

_EMULATING: contextvars.ContextVar[bool] = contextvars.ContextVar("zmlx_emulate", default=False)
_LIBS: dict[str, ctypes.CDLL] = {}


def active() -> bool:
    return _EMULATING.get()


def available() -> bool:
    """True when a C++ compiler is found (the emulator compiles kernels with it)."""
    return shutil.which(os.environ.get("CXX", "c++")) is not None


@contextlib.contextmanager
def emulate() -> Iterator[None]:
    """Run every kernel launch in the block on the CPU emulator (backend reads ``"cuda"``)."""
    token = _EMULATING.set(True)
    try:
        with force_backend("cuda"):
            yield
    finally:
        _EMULATING.reset(token)


def _cache_dir() -> Path:
    root = os.environ.get("ZMLX_EMULATOR_CACHE") or os.path.join(tempfile.gettempdir(), "zmlx-emu")
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _poisoned(body: str) -> str:
    """Each ``ZX_SHARED`` declaration followed by a call that poisons the array per group."""
    return SHARED_DECL.sub(
        lambda m: (
            f"{m.group(0).rstrip()}; zx_poison_shared((void*){m.group(2)}, sizeof({m.group(2)}))"
        ),
        body,
    )


def host_source(kernel, inputs, output_dtypes, template) -> str:
    """The host C++ translation unit for one launch (exposed for debugging)."""
    body = _poisoned(render_body(kernel.body, HOST))
    params, unpack = [], []
    k = 0
    for name, a in zip(kernel.inputs, inputs):
        ctype = _TYPES[a.dtype][0]
        params.append(f"const {ctype}* {name}")
        unpack.append(f"(const {ctype}*)b[{k}]")
        k += 1
        if a.ndim > 0:
            for arg in shape_args(name, body):
                ctype = {"shape": "const int*", "strides": "const int64_t*", "ndim": "const int"}[
                    arg
                ]
                params.append(f"{ctype} {name}_{arg}")
                unpack.append(f"*(const int*)b[{k}]" if arg == "ndim" else f"({ctype})b[{k}]")
                k += 1
    for name, dt in zip(kernel.outputs, output_dtypes):
        ctype = _TYPES[dt][0]
        params.append(f"{ctype}* {name}")
        unpack.append(f"({ctype}*)b[{k}]")
        k += 1
    consts = template_lines(template, lambda d: _TYPES[d][0])
    return "\n".join(
        [
            _RUNTIME,
            _HOST_PRELUDE,
            _COMMON_MATH,
            kernel.header,
            f"static void zx_kernel({', '.join(params)}) {{",
            *consts,
            body,
            "}",
            "static void** zx_bufs;",
            f"static void zx_entry() {{ void** b = zx_bufs; zx_kernel({', '.join(unpack)}); }}",
            _SCHEDULER,
            'extern "C" int zx_launch(void** bufs, const int* grid, const int* group) {',
            "  zx_bufs = bufs;",
            "  zx_g.bx = group[0]; zx_g.by = group[1]; zx_g.bz = group[2];",
            "  zx_g.nx = (grid[0] + group[0] - 1) / group[0];",
            "  zx_g.ny = (grid[1] + group[1] - 1) / group[1];",
            "  zx_g.nz = (grid[2] + group[2] - 1) / group[2];",
            "  zx_g.n = group[0] * group[1] * group[2];",
            "  zx_g.error = 0;",
            "  const size_t stack = 64 * 1024;",
            "  zx_thread* threads = (zx_thread*)calloc(zx_g.n, sizeof(zx_thread));",
            "  char* stacks = (char*)malloc(stack * zx_g.n);",
            "  zx_g.threads = threads;",
            "  const int rev = group[3];  // groups last to first: GPUs promise no order",
            "  for (uint z = 0; z < zx_g.nz && !zx_g.error; ++z)",
            "    for (uint y = 0; y < zx_g.ny && !zx_g.error; ++y)",
            "      for (uint x = 0; x < zx_g.nx && !zx_g.error; ++x) {",
            "        zx_g.gx = rev ? zx_g.nx - 1 - x : x;",
            "        zx_g.gy = rev ? zx_g.ny - 1 - y : y;",
            "        zx_g.gz = rev ? zx_g.nz - 1 - z : z;",
            "        ++zx_group_seq;",
            "        zx_run_group(zx_entry, stacks, stack);",
            "      }",
            "  free(stacks); free(threads);",
            "  return zx_g.error;",
            "}",
        ]
    )


def _library(source: str) -> ctypes.CDLL:
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    lib = _LIBS.get(digest)
    if lib is not None:
        return lib
    out = _cache_dir() / f"k{digest}.so"
    if not out.exists():
        # Per-process source and output, then an atomic rename: parallel test workers build
        # the same kernel at once, and one must never compile a source another is writing.
        src = out.with_suffix(f".{os.getpid()}.cpp")
        src.write_text(source)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cxx = os.environ.get("CXX", "c++")
        proc = subprocess.run(
            [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-w", "-o", str(tmp), str(src)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"[emulate] kernel failed to compile for the host:\n{proc.stderr[:4000]}"
            )
        os.replace(tmp, out)
        src.unlink(missing_ok=True)
    lib = ctypes.CDLL(str(out))
    lib.zx_launch.restype = ctypes.c_int
    _LIBS[digest] = lib
    return lib


_GUARD_KEEP: list = []  # guarded regions of the launch in flight


def _guard_on() -> bool:
    return os.environ.get("ZMLX_EMULATOR_GUARD") == "1" and os.name == "posix"


def _guarded(arr: np.ndarray) -> np.ndarray:
    """A copy of ``arr`` whose last byte sits just before an inaccessible page."""
    if arr.nbytes == 0:
        return arr
    page = mmap.PAGESIZE
    body = -(-arr.nbytes // page) * page
    region = mmap.mmap(-1, body + page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mprotect(ctypes.c_void_p(base + body), ctypes.c_size_t(page), 0) != 0:
        raise OSError(ctypes.get_errno(), "[emulate] mprotect failed for the guard page")
    out = np.frombuffer(region, dtype=arr.dtype, count=arr.size, offset=body - arr.nbytes)
    out = out.reshape(arr.shape)
    out[...] = arr
    _GUARD_KEEP.append(region)
    return out


def _padded(arr: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """``arr`` copied into a buffer whose outer axes have gaps (16 bytes after every row and
    every outer slice; the last axis stays contiguous) filled with poison, and its strides.

    Kernels launched with ``ensure_row_contiguous=False`` get the caller's layout on a GPU
    (a KV cache slice, a transposed view); here they get this one, so a kernel that reads
    its strides wrongly, or not at all, computes wrong values in the emulator too."""
    pad = max(1, 16 // arr.itemsize)
    strides = [1] * arr.ndim
    for i in range(arr.ndim - 2, -1, -1):
        strides[i] = strides[i + 1] * arr.shape[i + 1] + pad
    size = sum((n - 1) * st for n, st in zip(arr.shape, strides)) + 1
    buf = np.empty(size, arr.dtype)
    buf[...] = np.nan if arr.dtype.kind == "f" else (0x7FC0 if arr.dtype == np.uint16 else 0)
    view = np.lib.stride_tricks.as_strided(
        buf, arr.shape, [st * arr.itemsize for st in strides], writeable=True
    )
    view[...] = arr
    return buf, strides


def _to_numpy(a: mx.array) -> np.ndarray:
    if a.dtype == mx.bfloat16:
        return np.ascontiguousarray(np.array(a.view(mx.uint16)))
    return np.ascontiguousarray(np.array(a))


def launch(kernel, inputs, output_shapes, output_dtypes, grid, threadgroup, template, init_value):
    """Run one kernel launch on the emulator; returns the outputs as mlx arrays."""
    source = host_source(kernel, inputs, output_dtypes, template)
    lib = _library(source)
    body = render_body(kernel.body, HOST)
    guard = _guard_on()
    if guard:
        print(f"[emulate] guarded launch: {kernel.name}", file=sys.stderr, flush=True)
    place = _guarded if guard else (lambda x: x)
    keep, ptrs = [], []
    for name, a in zip(kernel.inputs, inputs):
        wanted = shape_args(name, body) if a.ndim > 0 else []
        if not kernel.ensure_row_contiguous and "strides" in wanted and a.ndim > 1 and a.size:
            arr, strides = _padded(_to_numpy(a))  # a strided layout, as MLX may pass one
        else:
            arr, strides = _to_numpy(a), [int(np.prod(a.shape[i + 1 :])) for i in range(a.ndim)]
        arr = place(arr)
        keep.append(arr)
        ptrs.append(arr.ctypes.data)
        if a.ndim > 0:
            values = {"shape": np.array(a.shape, dtype=np.int32),
                      "strides": np.array(strides, dtype=np.int64),
                      "ndim": np.array([a.ndim], dtype=np.int32)}  # fmt: skip
            extra = [values[arg] for arg in wanted]
            for e in extra:
                keep.append(e)
                ptrs.append(e.ctypes.data)
    outs = []
    for shape, dt in zip(output_shapes, output_dtypes):
        npdt = _TYPES[dt][1]
        if init_value is not None:
            o = (
                np.full(shape, init_value, dtype=np.float32).astype(npdt)
                if dt != mx.bfloat16
                else _to_numpy(mx.full(shape, init_value, dtype=mx.bfloat16))
            )
        else:
            # Poison: a value the kernel must overwrite (NaN for floats, a pattern for ints).
            o = np.full(shape, 0x7FC0 if dt == mx.bfloat16 else 0, dtype=npdt)
            if npdt in (np.float16, np.float32):
                o[...] = np.nan
        o = place(np.ascontiguousarray(o))
        outs.append(o)
        ptrs.append(o.ctypes.data)
    bufs = (ctypes.c_void_p * len(ptrs))(*ptrs)
    g = (ctypes.c_int * 3)(*grid)
    # MLX's CUDA launch makes each block min(threadgroup, grid) threads per axis: a grid
    # smaller than the group gets a smaller group (and lsize says so), as here.
    group = [max(1, min(tg, gr)) for tg, gr in zip(threadgroup, grid)]
    t = (ctypes.c_int * 4)(
        *group, int(os.environ.get("ZMLX_EMULATOR_ORDER", "reverse") == "reverse")
    )
    err = lib.zx_launch(bufs, g, t)
    if err:
        what = {
            1: "divergent warp shuffle (not every live lane of a warp called it)",
            2: "shuffle read from a lane that is not in the shuffle",
            3: "deadlock (threads wait at a barrier others never reach)",
            4: "barrier not reached by every thread of the group (some had returned)",
            5: "warp mma (zx_mma_bf16) not called by all 32 lanes of a warp",
            6: "a group waits for a count that groups which ran before it did not reach",
            7: "zx_ld2 of an address that is not 8-byte aligned",
        }[err]
        raise RuntimeError(f"[emulate] {kernel.name}: {what}")
    result = []
    for o, dt in zip(outs, output_dtypes):
        o = np.array(o) if guard else o  # off the guarded region before it is released
        if dt == mx.bfloat16:
            result.append(mx.array(o).view(mx.bfloat16))
        else:
            result.append(mx.array(o))
    del keep
    _GUARD_KEEP.clear()
    return result
